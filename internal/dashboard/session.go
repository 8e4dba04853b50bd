package dashboard

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Identity is a local user: the uid and gid a unix socket's peer
// credentials gave.
type Identity struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// Bounds on what the dashboard keeps for logins: a local user asking for
// login links in a loop cannot make it grow.
const (
	maxTickets  = 64
	maxSessions = 1024
	// cookieName is the session cookie's.
	cookieName = "gatevisor_session"
)

// ErrNotAdmitted refuses a login the daemon does not admit.
var ErrNotAdmitted = errors.New("login not admitted")

// session is one browser's login: who logged in, whom the VMs' APIs see,
// and the token its forms must carry.
type session struct {
	id        string
	user      Identity // who logged in (the peer of gatevisor serve login)
	as        Identity // whom the VMs' APIs see
	delegated bool     // calls carry as in api.OnBehalfOfHeader
	csrf      string
	expires   time.Time
	flash     *flash // the outcome of the last action, shown once
}

// flash is an action's outcome, shown on the next page.
type flash struct {
	OK   bool
	Text string
}

// ticket is a one-time login link's secret, not yet used.
type ticket struct {
	user    Identity
	expires time.Time
}

// Ticket is the answer to a login request: the URL that logs a browser in
// once, before ExpiresAt.
type Ticket struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
	User      Identity  `json:"user"`
	// ActsAs is whom the VMs' APIs see for this login: the user itself
	// under a root daemon, the daemon's own user otherwise.
	ActsAs Identity `json:"acts_as"`
}

// randomToken is 32 random bytes, hex.
func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// NewTicket makes a one-time login link for user, the peer of a unix
// socket. A daemon that cannot act for others (not root) admits only its
// own user and root, and acts as itself for both; a root daemon admits
// every local user and acts as each.
func (d *Dashboard) NewTicket(user Identity) (Ticket, error) {
	as := user
	if !d.cfg.Delegate {
		if user.UID != d.cfg.Self.UID && user.UID != 0 {
			return Ticket{}, fmt.Errorf("%w: this gatevisor serve runs as uid %d, not as root, so it can act only as itself: it admits uid %d and root, not uid %d (run your own 'gatevisor serve', or ask root to run it as a service)",
				ErrNotAdmitted, d.cfg.Self.UID, d.cfg.Self.UID, user.UID)
		}
		as = d.cfg.Self
	}
	tok, err := randomToken()
	if err != nil {
		return Ticket{}, err
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, t := range d.tickets {
		if !now.Before(t.expires) {
			delete(d.tickets, k)
		}
	}
	if len(d.tickets) >= maxTickets {
		return Ticket{}, fmt.Errorf("%d login links are waiting to be used: try again once they expire (%v)", len(d.tickets), d.cfg.TicketTTL)
	}
	t := ticket{user: user, expires: now.Add(d.cfg.TicketTTL)}
	d.tickets[tok] = t
	return Ticket{URL: d.cfg.BaseURL + "/login?ticket=" + url.QueryEscape(tok), ExpiresAt: t.expires, User: user, ActsAs: as}, nil
}

// redeem turns a ticket into a session, once.
func (d *Dashboard) redeem(tok string) (*session, error) {
	now := d.now()
	id, err := randomToken()
	if err != nil {
		return nil, err
	}
	csrf, err := randomToken()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.tickets[tok]
	delete(d.tickets, tok)
	if !ok || !now.Before(t.expires) {
		return nil, errors.New("this login link is not valid: it was used already, it expired, or the daemon restarted since")
	}
	for k, s := range d.sessions {
		if !now.Before(s.expires) {
			delete(d.sessions, k)
		}
	}
	if len(d.sessions) >= maxSessions {
		return nil, fmt.Errorf("%d sessions are open: log out of one, or wait until they expire", len(d.sessions))
	}
	s := &session{id: id, user: t.user, as: t.user, delegated: d.cfg.Delegate && t.user.UID != 0, csrf: csrf, expires: now.Add(d.cfg.SessionTTL)}
	if !d.cfg.Delegate {
		s.as = d.cfg.Self
	}
	d.sessions[id] = s
	return s, nil
}

// sessionOf returns r's session, or nil and why there is none.
func (d *Dashboard) sessionOf(r *http.Request) (*session, string) {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil, "you are not logged in"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sessions[c.Value]
	if !ok {
		return nil, "your session is unknown: it ended (log out, or the daemon restarted)"
	}
	if !d.now().Before(s.expires) {
		delete(d.sessions, c.Value)
		return nil, "your session expired"
	}
	return s, ""
}

// setFlash keeps an action's outcome for s's next page.
func (d *Dashboard) setFlash(s *session, ok bool, text string) {
	d.mu.Lock()
	s.flash = &flash{OK: ok, Text: text}
	d.mu.Unlock()
}

// takeFlash returns s's pending outcome, once.
func (d *Dashboard) takeFlash(s *session) *flash {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := s.flash
	s.flash = nil
	return f
}

// checkCSRF reports whether a form post carries s's token, and, when the
// browser says where it comes from (Origin), comes from this site.
func checkCSRF(r *http.Request, s *session) error {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return fmt.Errorf("the request comes from %q, not from this dashboard (%s)", o, r.Host)
		}
	}
	got := r.PostFormValue("csrf")
	if subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
		return errors.New("the form's CSRF token is missing or wrong: reload the page and try again")
	}
	return nil
}

// login redeems a login link's ticket: a session cookie, then the index.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	s, err := d.redeem(r.URL.Query().Get("ticket"))
	if err != nil {
		d.renderLogin(w, http.StatusForbidden, err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Expires: s.expires, MaxAge: int(d.cfg.SessionTTL / time.Second)})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout ends r's session.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request, s *session) {
	d.mu.Lock()
	delete(d.sessions, s.id)
	d.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	d.renderLogin(w, http.StatusOK, "you are logged out")
}

// LoginHandler serves POST /login on a unix socket: peer names the
// connection's user (from SO_PEERCRED), who gets a one-time login link
// (JSON Ticket) if NewTicket admits them. It is never served on TCP,
// where nobody's identity is known.
func (d *Dashboard) LoginHandler(peer func(*http.Request) (Identity, bool)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		id, ok := peer(r)
		if !ok {
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "login links are given only on gatevisor serve's unix socket, to a peer whose credentials it can read"})
			return
		}
		t, err := d.NewTicket(id)
		if err != nil {
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(t)
	})
	return mux
}

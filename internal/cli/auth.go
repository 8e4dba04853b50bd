package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/boombuler/barcode/qr"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
	"github.com/gatevisor/gatevisor/internal/safefile"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

func init() { addSubcommand(newAuthCmd) }

// authSecret is a user's enrolment, kept 0600 in the user's config
// directory: the TOTP secret (RFC 6238) and the phrase shown back as the
// trusted-path cue.
type authSecret struct {
	User    string    `json:"user"`
	Secret  string    `json:"secret"` // base32
	Phrase  string    `json:"phrase"`
	Created time.Time `json:"created"`
	// LastStep is the last TOTP time step accepted: a code is used once.
	LastStep int64 `json:"last_step,omitempty"`
}

// authDir is where enrolments live: os.UserConfigDir()/gatevisor/auth.
func authDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "gatevisor", "auth"), nil
}

func authFile(user string) (string, error) {
	if err := api.ValidUser(user); err != nil {
		return "", err
	}
	d, err := authDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, user+".json"), nil
}

func loadAuthSecret(user string) (*authSecret, string, error) {
	p, err := authFile(user)
	if err != nil {
		return nil, "", err
	}
	f, err := safefile.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("user %s is not enrolled: run gatevisor auth enroll --user %s", user, user)
		}
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, "", fmt.Errorf("%s is readable by others (mode %v): the secret may be known; enroll again", p, fi.Mode().Perm())
	}
	var s authSecret
	if err := json.NewDecoder(io.LimitReader(f, 64<<10)).Decode(&s); err != nil {
		return nil, "", fmt.Errorf("%s: %w", p, err)
	}
	if s.User != user || s.Secret == "" || s.Phrase == "" {
		return nil, "", fmt.Errorf("%s: not an enrolment of %s", p, user)
	}
	return &s, p, nil
}

func saveAuthSecret(p string, s *authSecret) error {
	d := filepath.Dir(p)
	if err := safefile.Dir(filepath.Dir(d), 0o700); err != nil {
		return err
	}
	if err := safefile.Dir(d, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return safefile.WriteFile(p, append(b, '\n'), 0o600)
}

var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// checkTOTP validates code against s at now, once: the step it matches
// must be later than the last one accepted.
func checkTOTP(s *authSecret, code string, now time.Time) (int64, error) {
	code = strings.TrimSpace(code)
	if len(code) != 6 || strings.Trim(code, "0123456789") != "" {
		return 0, errors.New("the code is 6 digits")
	}
	step := now.Unix() / int64(totpOpts.Period)
	for _, d := range []int64{0, -1, 1} {
		st := step + d
		want, err := totp.GenerateCodeCustom(s.Secret, time.Unix(st*int64(totpOpts.Period), 0), totpOpts)
		if err != nil {
			return 0, err
		}
		if want == code {
			if st <= s.LastStep {
				return 0, errors.New("that code was already used: wait for the next one")
			}
			return st, nil
		}
	}
	return 0, errors.New("wrong code")
}

func newAuthCmd() *cobra.Command {
	var user, code, canary string
	var dur time.Duration
	var uids []uint
	var programs []string
	cmd := &cobra.Command{
		Use:   "auth NAME --user USER [--for 15m] [--uids UID,...] [--programs PATH,...]",
		Short: "Authenticate a user to the monitor on the host terminal (never through the guest), for the file gate's authenticated() rules",
		Long: `Authenticate USER to VM NAME's monitor, on the host: the user's secret
phrase (chosen at enrolment) is shown first, so the user can tell this
prompt is gatevisor's and not something the guest drew; then a TOTP code
(RFC 6238) from the user's authenticator is asked for (--code, or stdin
when it is not a terminal). On success the monitor holds a grant until it
expires (--for) or is revoked: the policy's authenticated("USER") holds
for the guest processes it covers (--uids, --programs; default all).
Enrol first with 'gatevisor auth enroll --user USER'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, p, err := loadAuthSecret(user)
			if err != nil {
				return err
			}
			if dur <= 0 || dur > api.MaxGrantDuration || dur%time.Second != 0 {
				return fmt.Errorf("--for %v: whole seconds, up to %v", dur, api.MaxGrantDuration)
			}
			out := cmd.ErrOrStderr()
			fmt.Fprintf(out, "gatevisor on this host, VM %s, user %s\n", args[0], user)
			fmt.Fprintf(out, "your phrase: %s\n", termtext.Escape(s.Phrase))
			fmt.Fprintln(out, "If that is not your phrase, stop: this prompt is not gatevisor's.")
			if code == "" {
				if code, err = readCode(cmd, out); err != nil {
					return err
				}
			}
			step, err := checkTOTP(s, code, time.Now())
			if err != nil {
				return fmt.Errorf("authentication of %s failed: %w", user, err)
			}
			s.LastStep = step
			if err := saveAuthSecret(p, s); err != nil {
				return err
			}
			req := api.AuthGrantRequest{User: user, Seconds: int64(dur / time.Second), Programs: programs, Canary: canary, Factor: "totp"}
			for _, u := range uids {
				if u > 1<<32-1 {
					return fmt.Errorf("--uids %d: out of range", u)
				}
				req.UIDs = append(req.UIDs, uint32(u))
			}
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				g, err := c.AuthGrant(ctx, req)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s authenticated to %s until %s\n", g.User, args[0], g.Expires.Local().Format(time.RFC3339))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the user to authenticate (required)")
	cmd.Flags().DurationVar(&dur, "for", 15*time.Minute, "how long the grant lasts")
	cmd.Flags().UintSliceVar(&uids, "uids", nil, "guest uids the grant covers (default: all)")
	cmd.Flags().StringSliceVar(&programs, "programs", nil, "guest programs (absolute paths) the grant covers (default: all)")
	cmd.Flags().StringVar(&code, "code", "", "the TOTP code (default: asked on the terminal, or read from stdin)")
	cmd.Flags().StringVar(&canary, "canary", "", "a string only the protected files hold: counted in guest RAM when the grant ends")
	_ = cmd.MarkFlagRequired("user")
	cmd.AddCommand(newAuthEnrollCmd(), newAuthLsCmd(), newAuthRevokeCmd())
	return cmd
}

// readCode reads the TOTP code: from the terminal with a prompt, or a
// line of stdin.
func readCode(cmd *cobra.Command, prompt io.Writer) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(prompt, "TOTP code: ")
	}
	line, err := bufio.NewReader(io.LimitReader(in, 64)).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no TOTP code: pass --code or type it: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// phraseWords make enrolment phrases: four words, 24 bits of choice,
// which is a recognition cue, not a secret factor.
var phraseWords = strings.Fields(`amber anchor apple arrow aspen autumn badger banner barley beacon birch bison
bramble breeze canyon cedar cobalt comet copper coral cricket crystal dahlia delta
ember falcon fennel fjord garnet glacier harbor hazel heron indigo ivory jasper
juniper kestrel lantern lemon lilac maple marble meadow falcon nectar nutmeg olive
orchid otter pebble pepper pine plum quartz raven river saffron salmon sierra`)

func randomPhrase() (string, error) {
	var w []string
	for range 4 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(phraseWords))))
		if err != nil {
			return "", err
		}
		w = append(w, phraseWords[n.Int64()])
	}
	return strings.Join(w, " "), nil
}

func newAuthEnrollCmd() *cobra.Command {
	var user, phrase string
	var force, noQR bool
	cmd := &cobra.Command{
		Use:   "enroll --user USER [--phrase TEXT]",
		Short: "Create a user's TOTP secret and phrase (0600, in the user's config directory) and show the otpauth:// URL",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := authFile(user)
			if err != nil {
				return err
			}
			if _, err := os.Lstat(p); err == nil && !force {
				return fmt.Errorf("%s is already enrolled (%s): pass --force to replace the secret", user, p)
			}
			if phrase == "" {
				if phrase, err = randomPhrase(); err != nil {
					return err
				}
			}
			if len(phrase) > 200 || strings.ContainsAny(phrase, "\n\r\x1b") {
				return errors.New("--phrase: one line of at most 200 bytes")
			}
			host, _ := os.Hostname()
			key, err := totp.Generate(totp.GenerateOpts{Issuer: "gatevisor", AccountName: user + "@" + host, Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
			if err != nil {
				return err
			}
			s := &authSecret{User: user, Secret: key.Secret(), Phrase: phrase, Created: time.Now().UTC().Truncate(time.Second)}
			if err := saveAuthSecret(p, s); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "enrolled %s: %s (mode 0600)\n", user, p)
			fmt.Fprintf(out, "phrase (shown by every 'gatevisor auth'): %s\n", phrase)
			fmt.Fprintf(out, "add to your authenticator: %s\n", key.URL())
			if !noQR {
				if err := printQR(out, key.URL()); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "no QR code: %v\n", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the user to enrol (required)")
	cmd.Flags().StringVar(&phrase, "phrase", "", "the phrase shown back at authentication (default: four random words)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing enrolment")
	cmd.Flags().BoolVar(&noQR, "no-qr", false, "do not draw the QR code")
	_ = cmd.MarkFlagRequired("user")
	return cmd
}

// printQR draws the URL as a QR code with half-block characters (two
// modules a character cell, a quiet zone of 2).
func printQR(w io.Writer, url string) error {
	code, err := qr.Encode(url, qr.M, qr.Auto)
	if err != nil {
		return err
	}
	n := code.Bounds().Dx()
	dark := func(x, y int) bool {
		if x < 0 || y < 0 || x >= n || y >= n {
			return false
		}
		r, _, _, _ := code.At(x, y).RGBA()
		return r < 0x8000
	}
	var b strings.Builder
	for y := -2; y < n+2; y += 2 {
		for x := -2; x < n+2; x++ {
			top, bot := dark(x, y), dark(x, y+1)
			switch {
			case top && bot:
				b.WriteString(" ")
			case top:
				b.WriteString("▄")
			case bot:
				b.WriteString("▀")
			default:
				b.WriteString("█")
			}
		}
		b.WriteString("\n")
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func newAuthLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls NAME",
		Short: "The grants in force on a VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				gs, err := c.AuthList(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(gs)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "USER\tUIDS\tPROGRAMS\tBY\tEXPIRES\tLEFT")
				for _, g := range gs.Grants {
					u := "any"
					if len(g.UIDs) > 0 {
						var s []string
						for _, x := range g.UIDs {
							s = append(s, strconv.FormatUint(uint64(x), 10))
						}
						u = strings.Join(s, ",")
					}
					p := "any"
					if len(g.Programs) > 0 {
						p = termtext.Escape(strings.Join(g.Programs, ","))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", g.User, u, p, g.By, g.Expires.Local().Format(time.RFC3339), time.Until(g.Expires).Round(time.Second))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAuthRevokeCmd() *cobra.Command {
	var user, canary string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "revoke NAME --user USER [--canary TEXT]",
		Short: "End a user's grant now; report what the guest held of the served files before and after the purge",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withVM(cmd, args[0], func(ctx context.Context, c *apiclient.Client) error {
				r, err := c.AuthRevoke(ctx, api.AuthRevokeRequest{User: user, Canary: canary})
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(r)
				}
				out := cmd.OutOrStdout()
				p := r.Purge
				fmt.Fprintf(out, "revoked %s's grant on %s\n", r.Grant.User, args[0])
				fmt.Fprintf(out, "page cache of the served mounts (guest kernel's structures: %d mounts, %d inodes): %d pages before, %d after\n",
					p.Mounts, p.Inodes, p.CachedPagesBefore, p.CachedPagesAfter)
				if p.CanaryPagesBefore >= 0 {
					fmt.Fprintf(out, "guest pages holding the canary (raw RAM scan): %d before, %d free ones scrubbed (guest stopped), %d after\n", p.CanaryPagesBefore, p.Scrubbed, p.CanaryPagesAfter)
				}
				for _, h := range p.Held {
					fmt.Fprintf(out, "  held: pfn %#x: %s", h.PFN, termtext.Escape(h.Kind))
					for _, o := range h.Owners {
						fmt.Fprintf(out, ", pid %d (%s)", o.PID, termtext.Escape(o.Comm))
					}
					if h.Detail != "" {
						fmt.Fprintf(out, " [%s]", termtext.Escape(h.Detail))
					}
					fmt.Fprintln(out)
				}
				for _, e := range p.Errors {
					fmt.Fprintf(out, "not verified: %s\n", termtext.Escape(e))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "the user whose grant ends (required)")
	cmd.Flags().StringVar(&canary, "canary", "", "count guest pages holding this string (default: the grant's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("user")
	return cmd
}

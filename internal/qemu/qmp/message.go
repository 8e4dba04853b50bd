package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MaxLineSize caps one JSON line read from QEMU. Larger lines are a protocol
// error and close the connection: QMP replies are small except for a few
// query commands, which stay well below this.
const MaxLineSize = 16 << 20

// ErrMalformed is wrapped by errors about messages that are not valid QMP.
var ErrMalformed = errors.New("qmp: malformed message")

// Error is an error returned by QEMU for a command, e.g.
// {"error": {"class": "GenericError", "desc": "..."}}. [Client.Execute]
// returns it wrapped with the command's name; use errors.As to get it.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event such as STOP, RESUME or SHUTDOWN.
type Event struct {
	Name      string
	Data      json.RawMessage // nil when the event carries no data
	Timestamp time.Time
}

// Version is QEMU's version from the QMP greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// messageKind tells the four kinds of message QEMU sends apart.
type messageKind int

const (
	kindGreeting messageKind = iota + 1
	kindReturn
	kindError
	kindEvent
)

// message is one decoded line from QEMU.
type message struct {
	kind     messageKind
	id       string          // kindReturn, kindError; "" when QEMU sent none or a non-string id
	ret      json.RawMessage // kindReturn
	err      *Error          // kindError
	event    Event           // kindEvent
	version  Version         // kindGreeting
	capabils []string        // kindGreeting
}

type wireMessage struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        json.RawMessage `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// decodeMessage parses one line from QEMU. It is pure and never panics; any
// input that is not exactly one greeting, return, error or event is an error
// wrapping ErrMalformed.
func decodeMessage(line []byte) (message, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return message{}, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var w wireMessage
	if err := json.Unmarshal(line, &w); err != nil {
		return message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	n := 0
	for _, present := range []bool{w.QMP != nil, w.Return != nil, w.Error != nil, w.Event != nil} {
		if present {
			n++
		}
	}
	if n != 1 {
		return message{}, fmt.Errorf("%w: want exactly one of QMP, return, error, event; got %d", ErrMalformed, n)
	}
	var m message
	switch {
	case w.QMP != nil:
		m.kind = kindGreeting
		v := w.QMP.Version
		m.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
		m.capabils = w.QMP.Capabilities
	case w.Return != nil:
		m.kind = kindReturn
		m.ret = w.Return
	case w.Error != nil:
		m.kind = kindError
		m.err = w.Error
	case w.Event != nil:
		if *w.Event == "" {
			return message{}, fmt.Errorf("%w: event without a name", ErrMalformed)
		}
		m.kind = kindEvent
		m.event.Name = *w.Event
		if len(w.Data) > 0 && !bytes.Equal(w.Data, []byte("null")) {
			m.event.Data = w.Data
		}
		if ts := w.Timestamp; ts != nil && ts.Seconds >= 0 && ts.Microseconds >= 0 && ts.Microseconds < 1e6 {
			m.event.Timestamp = time.Unix(ts.Seconds, ts.Microseconds*1000).UTC()
		}
	}
	if len(w.ID) > 0 {
		var id string
		if json.Unmarshal(w.ID, &id) == nil {
			m.id = id
		}
	}
	return m, nil
}

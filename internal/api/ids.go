package api

import "encoding/json"

// IDSResult is one introspection answer. Result's shape depends on Query
// (see internal/ids); the API passes it through.
type IDSResult struct {
	Query         string          `json:"query"`
	Source        string          `json:"source"`
	ElapsedMicros int64           `json:"elapsed_us"`
	Result        json.RawMessage `json:"result"`
	// Incomplete, when set, says what a listing could not read (entries
	// that did not validate, with their addresses, or a walk that stopped
	// early); Result then holds every entry that could be read.
	Incomplete string `json:"incomplete,omitempty"`
	// Frozen, for ps and threads, are the processes gatevisor keeps
	// stopped (gatevisor proc freeze) until a thaw.
	Frozen []int `json:"frozen,omitempty"`
}

// DumpRequest asks for an ELF dump of guest memory.
type DumpRequest struct {
	Path string `json:"path"`
}

// DumpResult describes a finished dump.
type DumpResult struct {
	Path          string `json:"path"`
	Size          int64  `json:"size"`
	ElapsedMicros int64  `json:"elapsed_us"`
}

package api

import (
	"fmt"
	"strconv"
	"time"
)

// NetFlows is the network gate's flow table (GET /v1/net/flows): the
// newest flows, each with the guest process it was attributed to and the
// decision on it.
type NetFlows struct {
	// Flows are the newest Limit flows, newest first (by first frame).
	Flows []NetFlow `json:"flows"`
	// Total is how many flows the table holds; more than len(Flows) when
	// the limit cut the list.
	Total int `json:"total"`
	Limit int `json:"limit"`
	// Isolated says why the network is cut off ("" when it is not).
	Isolated string `json:"isolated,omitempty"`
}

// NetFlow is one flow of the network gate's table. Guest-chosen text
// (the process's comm and exe) is exact: escape it where a person reads it.
type NetFlow struct {
	Proto  string `json:"proto"`  // tcp, udp, icmp
	Local  string `json:"local"`  // the guest's end, ADDRESS:PORT (ICMP: the echo id)
	Remote string `json:"remote"` // the other end
	Dir    string `json:"dir"`    // out: the guest opened it; in: a peer did
	// State is pending (waiting for attribution or a decision), allowed
	// or denied.
	State string `json:"state"`
	// Closed: a TCP flow saw a RST or a FIN both ways; Answered: a frame
	// came from the side that did not open it.
	Closed   bool `json:"closed"`
	Answered bool `json:"answered"`
	// Verdict, Action (forward, reset, drop), Rule and Reason are the
	// decision's, PolicySeq the policy that took it; Revoked marks an open
	// flow a reload (or an isolation) denied. Empty while pending.
	Verdict    string `json:"verdict,omitempty"`
	Action     string `json:"action,omitempty"`
	Rule       string `json:"rule,omitempty"`
	Reason     string `json:"reason,omitempty"`
	PolicySeq  uint64 `json:"policy_seq,omitempty"`
	Revoked    bool   `json:"revoked,omitempty"`
	Permissive bool   `json:"permissive,omitempty"`
	// Process is the guest process that owns the flow's socket; nil when
	// none was found, and NoProcess says why.
	Process   *NetFlowProcess `json:"process,omitempty"`
	NoProcess string          `json:"no_process,omitempty"`
	// Created is the flow's first frame, Decided its decision, Last its
	// last frame.
	Created time.Time  `json:"created"`
	Decided *time.Time `json:"decided,omitempty"`
	Last    time.Time  `json:"last"`
	// Frames and bytes the gate saw from the guest (out) and for it (in)
	// on this flow, those it dropped or held included.
	FramesOut uint64 `json:"frames_out"`
	FramesIn  uint64 `json:"frames_in"`
	BytesOut  uint64 `json:"bytes_out"`
	BytesIn   uint64 `json:"bytes_in"`
}

// NetFlowProcess is the guest process a flow was attributed to, as the
// gate found it when it decided the flow.
type NetFlowProcess struct {
	PID   int32  `json:"pid"`
	Start uint64 `json:"start_ns,omitempty"` // start time, ns since guest boot: tells a reused pid apart
	PPID  int32  `json:"ppid,omitempty"`
	Comm  string `json:"comm"`
	Exe   string `json:"exe,omitempty"`
	UID   uint32 `json:"uid"`
	GID   uint32 `json:"gid"`
}

// Limits of GET /v1/net/flows, mirrored in openapi.yaml.
const (
	DefaultNetFlowsLimit = 500
	MaxNetFlowsLimit     = 10000
)

// ParseNetFlowsLimit reads the limit parameter of GET /v1/net/flows ("":
// DefaultNetFlowsLimit).
func ParseNetFlowsLimit(s string) (int, error) {
	if s == "" {
		return DefaultNetFlowsLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxNetFlowsLimit {
		return 0, fmt.Errorf("limit %q: ask for 1 to %d flows", s, MaxNetFlowsLimit)
	}
	return n, nil
}

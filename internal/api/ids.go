package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// IDSQueries are the introspection queries the API answers.
var IDSQueries = []string{"banner", "syscalls", "ps", "modules", "sockets", "check"}

// IDSResult is one introspection answer. Result's shape depends on Query
// (see internal/ids); the API passes it through.
type IDSResult struct {
	Query         string          `json:"query"`
	Source        string          `json:"source"`
	ElapsedMicros int64           `json:"elapsed_us"`
	Result        json.RawMessage `json:"result"`
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

func (s *Server) ids(w http.ResponseWriter, r *http.Request) {
	q := r.PathValue("query")
	known := false
	for _, k := range IDSQueries {
		known = known || k == q
	}
	if !known {
		writeError(w, http.StatusNotFound, &Error{Code: CodeNotFound, Message: fmt.Sprintf("unknown IDS query %q: use one of %s", q, strings.Join(IDSQueries, ", "))})
		return
	}
	src := r.URL.Query().Get("source")
	if src != "" && src != "ram" && src != "gdbstub" {
		badRequest(w, "source %q: use ram or gdbstub", src)
		return
	}
	res, err := s.vm.IDS(r.Context(), q, src)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) dump(w http.ResponseWriter, r *http.Request) {
	var req DumpRequest
	if !decode(w, r, &req, false) {
		return
	}
	if !filepath.IsAbs(req.Path) || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0) {
		badRequest(w, "path %q: give an absolute file path", req.Path)
		return
	}
	res, err := s.vm.Dump(r.Context(), req.Path)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) writePhysical(w http.ResponseWriter, r *http.Request) {
	addr, err := ParseAddress(r.URL.Query().Get("address"))
	if err != nil {
		badRequest(w, "address %q: give a guest-physical address, decimal or 0x hex", r.URL.Query().Get("address"))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxReadLength))
	if err != nil || len(data) == 0 {
		badRequest(w, "body: send 1 to %d bytes to write", MaxReadLength)
		return
	}
	if err := s.vm.WritePhysical(r.Context(), addr, data); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	follow := false
	if v := r.URL.Query().Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			badRequest(w, "follow %q: use true or false", v)
			return
		}
		follow = b
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	_ = s.vm.Events(r.Context(), w, follow, flush)
}

// IDS runs an introspection query; source is "ram" (default) or "gdbstub".
func (c *Client) IDS(ctx context.Context, query, source string) (IDSResult, error) {
	var res IDSResult
	path := "/v1/ids/" + url.PathEscape(query)
	if source != "" {
		path += "?source=" + url.QueryEscape(source)
	}
	err := c.do(ctx, http.MethodGet, path, nil, &res)
	return res, err
}

// Dump writes an ELF dump of guest memory to path (absolute, on the host).
func (c *Client) Dump(ctx context.Context, path string) (DumpResult, error) {
	var res DumpResult
	err := c.do(ctx, http.MethodPost, "/v1/dump", DumpRequest{Path: path}, &res)
	return res, err
}

// WritePhysical writes data to guest-physical memory at addr.
func (c *Client) WritePhysical(ctx context.Context, addr uint64, data []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://gatevisor/v1/memory/physical?address=0x"+strconv.FormatUint(addr, 16), strings.NewReader(string(data)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	return c.send(req, nil)
}

// Events returns the event stream (history, then new events if follow).
// The caller closes it.
func (c *Client) Events(ctx context.Context, follow bool) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://gatevisor/v1/events?follow="+strconv.FormatBool(follow), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp.Body, nil
}

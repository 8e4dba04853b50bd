package apiserver

import (
	"net/http"
	"path/filepath"

	"github.com/gatevisor/gatevisor/internal/api"
)

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	var req api.RestartRequest
	if !decode(w, r, &req, false) {
		return
	}
	if req.QEMUBinary != "" && (!filepath.IsAbs(req.QEMUBinary) || len(req.QEMUBinary) > 4096) {
		badRequest(w, "qemu_binary %q: give an absolute path", req.QEMUBinary)
		return
	}
	res, err := s.vm.Restart(r.Context(), req)
	reply(w, res, err)
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	var req api.UpgradeRequest
	if !decode(w, r, &req, true) {
		return
	}
	if req.Binary != "" && (!filepath.IsAbs(req.Binary) || len(req.Binary) > 4096) {
		badRequest(w, "binary %q: give an absolute path", req.Binary)
		return
	}
	res, err := s.vm.Upgrade(r.Context(), req)
	reply(w, res, err)
}

// snapshotTag decodes and checks a SnapshotRequest.
func snapshotTag(w http.ResponseWriter, r *http.Request) (string, bool) {
	var req api.SnapshotRequest
	if !decode(w, r, &req, false) {
		return "", false
	}
	if err := api.CheckSnapshotTag(req.Tag); err != nil {
		badRequest(w, "%v", err)
		return "", false
	}
	return req.Tag, true
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	tag, ok := snapshotTag(w, r)
	if !ok {
		return
	}
	res, err := s.vm.Snapshot(r.Context(), tag)
	reply(w, res, err)
}

func (s *Server) snapshots(w http.ResponseWriter, r *http.Request) {
	res, err := s.vm.Snapshots(r.Context())
	reply(w, res, err)
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	tag, ok := snapshotTag(w, r)
	if !ok {
		return
	}
	res, err := s.vm.Rollback(r.Context(), tag)
	reply(w, res, err)
}

func (s *Server) removeSnapshot(w http.ResponseWriter, r *http.Request) {
	tag, ok := snapshotTag(w, r)
	if !ok {
		return
	}
	if err := s.vm.RemoveSnapshot(r.Context(), tag); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

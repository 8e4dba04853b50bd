package apiserver

import (
	"net/http"

	"github.com/gatevisor/gatevisor/internal/api"
)

// filesVM returns the VM's file-serving side, or answers 409.
func (s *Server) filesVM(w http.ResponseWriter) (api.FilesVM, bool) {
	fv, ok := s.vm.(api.FilesVM)
	if !ok {
		writeError(w, http.StatusConflict, &api.Error{Code: api.CodeConflict, Message: "this VM has no file gate or grants"})
	}
	return fv, ok
}

func (s *Server) authGrant(w http.ResponseWriter, r *http.Request) {
	var req api.AuthGrantRequest
	if !decode(w, r, &req, false) {
		return
	}
	if err := api.ValidateAuthGrant(&req); err != nil {
		badRequest(w, "%v", err)
		return
	}
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	c, _ := api.CallerFromContext(r.Context())
	res, err := fv.AuthGrant(r.Context(), c, req)
	reply(w, res, err)
}

func (s *Server) authList(w http.ResponseWriter, r *http.Request) {
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	res, err := fv.AuthList(r.Context())
	reply(w, res, err)
}

func (s *Server) authRevoke(w http.ResponseWriter, r *http.Request) {
	var req api.AuthRevokeRequest
	if !decode(w, r, &req, false) {
		return
	}
	if err := api.ValidUser(req.User); err != nil {
		badRequest(w, "%v", err)
		return
	}
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	c, _ := api.CallerFromContext(r.Context())
	res, err := fv.AuthRevoke(r.Context(), c, req)
	reply(w, res, err)
}

func (s *Server) filesOpen(w http.ResponseWriter, r *http.Request) {
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	res, err := fv.ServedFiles(r.Context())
	reply(w, res, err)
}

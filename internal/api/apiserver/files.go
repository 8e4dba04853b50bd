package apiserver

import (
	"context"
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

// callFiles answers a file-gate request whose body is a Q: decoded,
// checked, then handed with its caller to the VM's file-serving side.
func callFiles[Q, R any](s *Server, w http.ResponseWriter, r *http.Request, check func(*Q) error,
	call func(api.FilesVM, context.Context, api.Caller, Q) (R, error)) {
	var req Q
	if !decode(w, r, &req, false) {
		return
	}
	if err := check(&req); err != nil {
		badRequest(w, "%v", err)
		return
	}
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	c, _ := api.CallerFromContext(r.Context())
	res, err := call(fv, r.Context(), c, req)
	reply(w, res, err)
}

func (s *Server) authGrant(w http.ResponseWriter, r *http.Request) {
	callFiles(s, w, r, api.ValidateAuthGrant, api.FilesVM.AuthGrant)
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
	callFiles(s, w, r, func(q *api.AuthRevokeRequest) error { return api.ValidUser(q.User) }, api.FilesVM.AuthRevoke)
}

func (s *Server) filesOpen(w http.ResponseWriter, r *http.Request) {
	fv, ok := s.filesVM(w)
	if !ok {
		return
	}
	res, err := fv.ServedFiles(r.Context())
	reply(w, res, err)
}

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
)

// vapiAPI serves the tagging part of the vSphere Automation API under `/api`, as
// vCenter 7.0 U2 and later do beside the older `/rest` paths. govmomi 0.24's vapi
// simulator knows only `/rest/com/vmware/cis/...`; this layer translates:
//
//	POST/DELETE /api/session                   -> /rest/com/vmware/cis/session
//	/api/cis/tagging/{kind}[/{id}][?action=X]  -> /rest/com/vmware/cis/tagging/{kind}[/id:{id}][?~action=X]
//
// Bodies of create (POST without id, no action) and update (PATCH) go in
// {"create_spec": ...} / {"update_spec": ...}; answers lose /rest's {"value": ...}
// wrapper (govmomi's vapi/rest client reads /api answers unwrapped). With
// -vapi-rest-only the simulator answers 404 under /api, like vCenter 6.7.
type vapiAPI struct {
	next     http.Handler
	restOnly bool
}

func newVapiAPI(next http.Handler, restOnly bool) http.Handler {
	return &vapiAPI{next: next, restOnly: restOnly}
}

const restCIS = "/rest/com/vmware/cis"

func (v *vapiAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/api/") {
		v.next.ServeHTTP(w, r)
		return
	}
	if v.restOnly {
		http.NotFound(w, r)
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/api")
	var path string
	switch {
	case rest == "/session":
		path = restCIS + "/session"
	case strings.HasPrefix(rest, "/cis/tagging/"):
		parts := strings.SplitN(strings.TrimPrefix(rest, "/cis/tagging/"), "/", 2)
		path = restCIS + "/tagging/" + parts[0]
		if len(parts) == 2 && parts[1] != "" {
			path += "/id:" + parts[1]
		}
	default:
		http.NotFound(w, r)
		return
	}
	action := r.URL.Query().Get("action")
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "vcsim: reading request: "+err.Error(), http.StatusBadRequest)
		return
	}
	isID := strings.Contains(path, "/id:")
	switch {
	case r.Method == http.MethodPost && action == "" && !isID && strings.Contains(path, "/tagging/"):
		body = wrap("create_spec", body)
	case r.Method == http.MethodPatch:
		body = wrap("update_spec", body)
	}
	req := r.Clone(r.Context())
	req.URL.Path = path
	req.URL.RawPath = ""
	req.URL.RawQuery = ""
	if action != "" {
		req.URL.RawQuery = "~action=" + action
	}
	req.RequestURI = ""
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	v.next.ServeHTTP(rec, req)
	out := rec.Body.Bytes()
	if rec.Code < 300 {
		var wrapped struct {
			Value json.RawMessage `json:"value"`
		}
		if json.Unmarshal(out, &wrapped) == nil && wrapped.Value != nil {
			out = wrapped.Value
		}
	}
	for k, vals := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = vals
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(out)
}

func wrap(key string, body []byte) []byte {
	if len(bytes.TrimSpace(body)) == 0 {
		return body
	}
	out, err := json.Marshal(map[string]json.RawMessage{key: body})
	if err != nil {
		return body
	}
	return out
}

package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// privilegeDenial answers AuthorizationManager.HasPrivilegeOnEntities the way vCenter does
// for an account whose role lacks some privileges: one EntityPrivilege per entity, one
// PrivilegeAvailability per asked privilege, isGranted false for the denied ones (vSphere
// API, AuthorizationManager.HasPrivilegeOnEntities, since 6.5). govmomi's simulator grants
// everything to everyone, so a client reporting missing privileges could not be tested.
// Flag -deny-privileges "ID,ID,...": those privileges are reported as not granted on every
// entity; everything else passes through to the simulator.
type privilegeDenial struct {
	next   http.Handler
	denied map[string]bool
}

func newPrivilegeDenial(next http.Handler, list string) http.Handler {
	if list == "" {
		return next
	}
	denied := map[string]bool{}
	for _, id := range strings.Split(list, ",") {
		if id = strings.TrimSpace(id); id != "" {
			denied[id] = true
		}
	}
	return &privilegeDenial{next: next, denied: denied}
}

type hasPrivilegeBody struct {
	Res *types.HasPrivilegeOnEntitiesResponse `xml:"urn:vim25 HasPrivilegeOnEntitiesResponse"`
}

func (p *privilegeDenial) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	if !bytes.Contains(body, []byte("HasPrivilegeOnEntities")) {
		p.next.ServeHTTP(w, r)
		return
	}
	method, err := decodeRequest(body)
	req, isReq := (*types.HasPrivilegeOnEntities)(nil), false
	if err == nil {
		req, isReq = method.Body.(*types.HasPrivilegeOnEntities)
	}
	q := &quiesceFault{next: p.next}
	if !isReq || !q.authenticated(r) {
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.next.ServeHTTP(w, r)
		return
	}
	var out []types.EntityPrivilege
	for _, e := range req.Entity {
		ep := types.EntityPrivilege{Entity: e}
		for _, id := range req.PrivId {
			ep.PrivAvailability = append(ep.PrivAvailability,
				types.PrivilegeAvailability{PrivId: id, IsGranted: !p.denied[id]})
		}
		out = append(out, ep)
	}
	writeEnvelope(w, http.StatusOK, &hasPrivilegeBody{Res: &types.HasPrivilegeOnEntitiesResponse{Returnval: out}})
}

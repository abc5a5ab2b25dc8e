package main

import (
	"bytes"
	"net/http"

	"github.com/vmware/govmomi/simulator"
)

// poolViews puts resource pools and vApps created by CreateResourcePool and
// CreateVApp into the container views that hold their parent. govmomi 0.24
// registers the new pool before linking it to its parent, so a ContainerView
// (which checks reachability from its container when an object is registered)
// never lists it, and a view-based PropertyCollector filter never sees the pool
// or the VMs created in it. vCenter's view "always represents the current
// configuration of the virtual environment" (ContainerView, vSphere API
// reference). Registering the object again once it is linked lets every view and
// collector see it; a collector reports an object it already holds only once.
type poolViews struct{ next http.Handler }

func newPoolViews(next http.Handler) http.Handler { return &poolViews{next: next} }

func (p *poolViews) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	if body == nil || !(bytes.Contains(body, []byte("CreateResourcePool")) ||
		bytes.Contains(body, []byte("CreateVApp"))) {
		p.next.ServeHTTP(w, r)
		return
	}
	rec := newRecorder()
	p.next.ServeHTTP(rec, r)
	if ref, ok := rec.returnval(); ok && rec.status == http.StatusOK {
		if obj := simulator.Map.Get(ref); obj != nil {
			simulator.Map.Put(obj)
		}
	}
	rec.flush(w)
}

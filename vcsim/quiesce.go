package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// quiesceFault makes quiesced snapshots of chosen VMs fail, as they do on ESXi
// when VMware Tools cannot quiesce the guest (no Tools, a VSS writer error, a
// pre-freeze script failing). govmomi's simulator never fails a snapshot, so a
// client's fallback to a crash-consistent snapshot could not be tested
// otherwise. A matching CreateSnapshot_Task with quiesce=true answers with a
// task that ends in ApplicationQuiesceFault and creates nothing; the same call
// with quiesce=false, and every other call, passes through untouched.
type quiesceFault struct {
	next http.Handler
	glob string // path.Match pattern on the VM's name
}

func newQuiesceFault(next http.Handler, glob string) http.Handler {
	if glob == "" {
		return next
	}
	if _, err := path.Match(glob, ""); err != nil {
		fail("-quiesce-fault: %q is not a valid name pattern: %v", glob, err)
	}
	return &quiesceFault{next: next, glob: glob}
}

type createSnapshotBody struct {
	Res *types.CreateSnapshot_TaskResponse `xml:"urn:vim25 CreateSnapshot_TaskResponse"`
}

func (q *quiesceFault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	req := createSnapshotCall(body)
	if req == nil || !req.Quiesce {
		q.next.ServeHTTP(w, r)
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		q.next.ServeHTTP(w, r) // the simulator's ManagedObjectNotFound
		return
	}
	var name string
	simulator.Map.WithLock(vm, func() { name = vm.Name })
	if match, _ := path.Match(q.glob, name); !match || !q.authenticated(r) {
		// Not ours, or no session: the simulator answers (NotAuthenticated).
		r.Body = io.NopCloser(bytes.NewReader(body))
		q.next.ServeHTTP(w, r)
		return
	}

	msg := fmt.Sprintf("An error occurred while quiescing the virtual machine %s: the guest "+
		"could not be quiesced (vcsim -quiesce-fault %s)", name, q.glob)
	fault := &types.ApplicationQuiesceFault{}
	fault.FaultMessage = []types.LocalizableMessage{{Key: "msg.snapshot.quiesce.vmerr", Message: msg}}
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	// Run() says only "*types.ApplicationQuiesceFault"; give the message ESXi would.
	simulator.Map.Update(task, []types.PropertyChange{{
		Name: "info.error",
		Val:  types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg},
	}})
	writeEnvelope(w, http.StatusOK, &createSnapshotBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: ref}})
}

// authenticated asks the simulator whether the request's session is logged in,
// with a harmless call (CurrentTime) carrying the same cookie.
func (q *quiesceFault) authenticated(r *http.Request) bool {
	probe := `<?xml version="1.0" encoding="UTF-8"?>` +
		`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
		`<soapenv:Body><CurrentTime xmlns="urn:vim25">` +
		`<_this type="ServiceInstance">ServiceInstance</_this>` +
		`</CurrentTime></soapenv:Body></soapenv:Envelope>`
	pr := r.Clone(r.Context())
	pr.Body = io.NopCloser(strings.NewReader(probe))
	pr.ContentLength = int64(len(probe))
	rec := newRecorder()
	q.next.ServeHTTP(rec, pr)
	return rec.status == http.StatusOK
}

package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// templateSnapshot refuses snapshots of templates, as vCenter does: a template
// cannot be powered on or snapshotted, and CreateSnapshot_Task lists NotSupported
// among its faults (vSphere API, VirtualMachine.CreateSnapshot_Task: "NotSupported:
// if the host product does not support snapshots"; MarkAsTemplate: "A VirtualMachine
// marked as a template cannot be powered on"). govmomi's simulator snapshots a
// template like any VM, so a backup that snapshots templates would pass here and
// fail on vCenter. Always on: a CreateSnapshot_Task on a VM whose config.template is
// set answers with a task that ends in NotSupported and creates nothing.
type templateSnapshot struct {
	next http.Handler
}

func newTemplateSnapshot(next http.Handler) http.Handler {
	return &templateSnapshot{next: next}
}

func (t *templateSnapshot) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	req := createSnapshotCall(body)
	if req == nil {
		t.next.ServeHTTP(w, r)
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		t.next.ServeHTTP(w, r)
		return
	}
	var name string
	var template bool
	simulator.Map.WithLock(vm, func() { name, template = vm.Name, vm.Config.Template })
	q := &quiesceFault{next: t.next}
	if !template || !q.authenticated(r) {
		r.Body = io.NopCloser(bytes.NewReader(body))
		t.next.ServeHTTP(w, r)
		return
	}
	msg := fmt.Sprintf("The operation is not supported on the object: %s is a template", name)
	fault := &types.NotSupported{}
	fault.FaultMessage = []types.LocalizableMessage{{Key: "msg.snapshot.template", Message: msg}}
	task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.Update(task, []types.PropertyChange{{
		Name: "info.error",
		Val:  types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg},
	}})
	writeEnvelope(w, http.StatusOK, &createSnapshotBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: ref}})
}

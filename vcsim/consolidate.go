package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// upkeep emulates two pieces of vSphere's snapshot housekeeping that govmomi
// 0.24.2 lacks (docs/vcsim.md, "Consolidation and enabling CBT"):
//
//   - runtime.consolidationNeeded ("Whether any disk of the virtual machine
//     requires consolidation. This can happen for example when a snapshot is
//     deleted but its associated disk is not committed back to the base disk.
//     Use ConsolidateVMDisks_Task to consolidate if needed", vSphere API,
//     VirtualMachineRuntimeInfo). With -consolidation-needed PATTERN, a
//     successful RemoveSnapshot_Task on a matching VM leaves it true, as a
//     removal that could not commit a delta does on ESXi.
//   - ConsolidateVMDisks_Task, which the simulator does not implement: a task
//     that clears runtime.consolidationNeeded, or, for VMs matching
//     -consolidate-fault PATTERN, fails with FileLocked (the common cause on
//     ESXi: a delta still open by another host or a backup proxy) and leaves it set.
//   - With -cbt-refuse-with-snapshots PATTERN, enabling CBT on a matching VM
//     that has snapshots: the ReconfigVM_Task succeeds but
//     config.changeTrackingEnabled stays false. VMware's rule is to enable CBT
//     only without snapshots; what vCenter answers otherwise we could not
//     verify, so this models the worst case (a silent no-op) for a client that
//     must check the result. Off by default.
type upkeep struct {
	next        http.Handler
	neededGlob  string
	faultGlob   string
	cbtGlob     string
	authChecker *quiesceFault
}

func newUpkeep(next http.Handler, neededGlob, faultGlob, cbtGlob string) http.Handler {
	for flag, glob := range map[string]string{
		"-consolidation-needed": neededGlob, "-consolidate-fault": faultGlob, "-cbt-refuse-with-snapshots": cbtGlob,
	} {
		if glob == "" {
			continue
		}
		if _, err := path.Match(glob, ""); err != nil {
			fail("%s: %q is not a valid name pattern: %v", flag, glob, err)
		}
	}
	return &upkeep{
		next: next, neededGlob: neededGlob, faultGlob: faultGlob, cbtGlob: cbtGlob,
		authChecker: &quiesceFault{next: next},
	}
}

func matches(glob, name string) bool {
	if glob == "" {
		return false
	}
	ok, _ := path.Match(glob, name)
	return ok
}

type consolidateBody struct {
	Res *types.ConsolidateVMDisks_TaskResponse `xml:"urn:vim25 ConsolidateVMDisks_TaskResponse"`
}

func (u *upkeep) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	switch {
	case bytes.Contains(body, []byte("ConsolidateVMDisks_Task")):
		u.consolidate(w, r, body)
	case bytes.Contains(body, []byte("RemoveSnapshot_Task")) && u.neededGlob != "":
		u.removeSnapshot(w, r, body)
	case u.cbtGlob != "" && bytes.Contains(body, []byte("ReconfigVM_Task")) &&
		bytes.Contains(body, []byte("changeTrackingEnabled")):
		u.reconfigure(w, r, body)
	default:
		u.next.ServeHTTP(w, r)
	}
}

func (u *upkeep) consolidate(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.ConsolidateVMDisks_Task
	if err == nil {
		req, _ = method.Body.(*types.ConsolidateVMDisks_Task)
	}
	if req == nil {
		u.next.ServeHTTP(w, r)
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok || !u.authChecker.authenticated(r) {
		r.Body = bytesReader(body)
		u.next.ServeHTTP(w, r) // the simulator's own fault
		return
	}
	var name, vmx string
	simulator.Map.WithLock(vm, func() { name, vmx = vm.Name, vm.Config.Files.VmPathName })
	task := simulator.CreateTask(vm, "consolidateVMDisks", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if matches(u.faultGlob, name) {
			f := &types.FileLocked{}
			f.File = vmx
			return nil, f
		}
		simulator.Map.WithLock(vm, func() {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "runtime.consolidationNeeded", Val: false},
			})
		})
		return nil, nil
	})
	ref := task.Run()
	if matches(u.faultGlob, name) {
		msg := fmt.Sprintf("Unable to access file %s since it is locked (vcsim -consolidate-fault)", vmx)
		simulator.Map.Update(task, []types.PropertyChange{{
			Name: "info.error",
			Val:  types.LocalizedMethodFault{Fault: &types.FileLocked{FileFault: types.FileFault{File: vmx}}, LocalizedMessage: msg},
		}})
	}
	writeEnvelope(w, http.StatusOK, &consolidateBody{Res: &types.ConsolidateVMDisks_TaskResponse{Returnval: ref}})
}

func (u *upkeep) removeSnapshot(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.RemoveSnapshot_Task
	if err == nil {
		req, _ = method.Body.(*types.RemoveSnapshot_Task)
	}
	var vm *simulator.VirtualMachine
	if req != nil {
		if snap, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachineSnapshot); ok {
			vm, _ = simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
		}
	}
	rec := newRecorder()
	u.next.ServeHTTP(rec, r)
	defer rec.flush(w)
	if vm == nil {
		return
	}
	if _, ok := taskResult(rec); !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if matches(u.neededGlob, vm.Name) {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "runtime.consolidationNeeded", Val: true},
			})
		}
	})
}

func (u *upkeep) reconfigure(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.ReconfigVM_Task
	if err == nil {
		req, _ = method.Body.(*types.ReconfigVM_Task)
	}
	if req == nil || !isTrue(req.Spec.ChangeTrackingEnabled) {
		u.next.ServeHTTP(w, r)
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	var had bool
	if ok {
		simulator.Map.WithLock(vm, func() {
			had = matches(u.cbtGlob, vm.Name) && vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0
		})
	}
	rec := newRecorder()
	u.next.ServeHTTP(rec, r)
	defer rec.flush(w)
	if !had {
		return
	}
	if _, done := taskResult(rec); !done {
		return
	}
	// Set in place: Registry.Update cannot assign the *bool this field is in 0.24.2, so
	// property collector waiters get no update for it (RetrieveProperties sees it).
	simulator.Map.WithLock(vm, func() { vm.Config.ChangeTrackingEnabled = types.NewBool(false) })
}

func bytesReader(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

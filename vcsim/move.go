package main

import (
	"bytes"
	"io"
	"net/http"
	"regexp"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// inPlaceMoves makes moves between folders look like vCenter's: the moved entity
// stays in the inventory and a PropertyCollector filter that sees it gets one
// `modify` of its `parent`. govmomi 0.24's MoveIntoFolder_Task (and RelocateVM_Task
// with spec.folder, which calls it) removes the entity from its registry and puts it
// back, so every filter sees a `leave` and an `enter` of the whole object in one
// update set, which hides whether a client follows `parent` changes at all.
//
// The call still goes through the simulator (session check, its own task), with
// the entities (or spec.folder) taken out of the request; once it succeeded the
// entities are moved here. A move the simulator would refuse (a type the folder
// cannot hold, a folder into itself) is passed on untouched, so its fault is the
// simulator's own. Only views rooted at the root folder stay exact: a view below
// it does not learn that an entity left or entered it (vigil roots its view there).
type inPlaceMoves struct{ next http.Handler }

func newInPlaceMoves(next http.Handler) http.Handler { return &inPlaceMoves{next: next} }

var (
	listElems   = regexp.MustCompile(`(?s)<(\w+:)?list\b[^>]*>[^<]*</(\w+:)?list>`)
	folderElems = regexp.MustCompile(`(?s)<(\w+:)?folder\b[^>]*>[^<]*</(\w+:)?folder>`)
)

func (m *inPlaceMoves) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	var target types.ManagedObjectReference
	var refs []types.ManagedObjectReference
	var stripped []byte
	switch {
	case body != nil && bytes.Contains(body, []byte("MoveIntoFolder_Task")):
		if req, ok := decoded[*types.MoveIntoFolder_Task](body); ok {
			target, refs = req.This, req.List
			stripped = listElems.ReplaceAll(body, nil)
		}
	case body != nil && bytes.Contains(body, []byte("RelocateVM_Task")):
		if req, ok := decoded[*types.RelocateVM_Task](body); ok && req.Spec.Folder != nil {
			target, refs = *req.Spec.Folder, []types.ManagedObjectReference{req.This}
			stripped = folderElems.ReplaceAll(body, nil)
		}
	}
	if len(refs) == 0 || !movable(target, refs) {
		m.next.ServeHTTP(w, r)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(stripped))
	r.ContentLength = int64(len(stripped))
	rec := newRecorder()
	m.next.ServeHTTP(rec, r)
	if task, ok := rec.returnval(); ok && rec.status == http.StatusOK && succeeded(task) {
		folder := simulator.Map.Get(target).(*simulator.Folder)
		for _, ref := range refs {
			moveInPlace(folder, ref)
		}
	}
	rec.flush(w)
}

func decoded[T any](body []byte) (T, bool) {
	var zero T
	method, err := decodeRequest(body)
	if err != nil {
		return zero, false
	}
	req, ok := method.Body.(T)
	return req, ok
}

// movable: every entity exists, sits in a folder, is of a type the target folder
// holds, and is not the target or one of its ancestors.
func movable(target types.ManagedObjectReference, refs []types.ManagedObjectReference) bool {
	folder, ok := simulator.Map.Get(target).(*simulator.Folder)
	if !ok {
		return false
	}
	for _, ref := range refs {
		e, ok := simulator.Map.Get(ref).(mo.Entity)
		if !ok || e.Entity().Parent == nil || !holds(folder, ref.Type) {
			return false
		}
		if _, ok := simulator.Map.Get(*e.Entity().Parent).(*simulator.Folder); !ok {
			return false
		}
		for cur := &folder.Self; cur != nil; {
			if *cur == ref {
				return false
			}
			parent, ok := simulator.Map.Get(*cur).(mo.Entity)
			if !ok {
				break
			}
			cur = parent.Entity().Parent
		}
	}
	return true
}

func holds(f *simulator.Folder, kind string) bool {
	for _, t := range f.ChildType {
		if t == kind || (t == "ComputeResource" && kind == "ClusterComputeResource") {
			return true
		}
	}
	return false
}

func succeeded(ref types.ManagedObjectReference) bool {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return false
	}
	var state types.TaskInfoState
	simulator.Map.WithLock(task, func() { state = task.Info.State })
	return state == types.TaskInfoStateSuccess
}

func moveInPlace(to *simulator.Folder, ref types.ManagedObjectReference) {
	obj, ok := simulator.Map.Get(ref).(mo.Entity)
	if !ok || obj.Entity().Parent == nil {
		return
	}
	from, ok := simulator.Map.Get(*obj.Entity().Parent).(*simulator.Folder)
	if !ok || from.Self == to.Self {
		return
	}
	simulator.Map.RemoveReference(from, &from.ChildEntity, ref)
	simulator.Map.AddReference(to, &to.ChildEntity, ref)
	simulator.Map.WithLock(obj, func() {
		// One modify of `parent`, as vCenter reports a move to the filters that see it.
		parent := to.Self
		obj.Entity().Parent = &parent
		simulator.Map.Update(obj, []types.PropertyChange{{Name: "parent", Val: to.Self}})
	})
}

package main

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vappConfig emulates the vApp configuration calls vCenter has and govmomi
// 0.24.2 lacks (docs/vcsim.md, "vApp configuration"):
//
//   - UpdateVAppConfig(spec VAppConfigSpec), which the simulator does not
//     implement at all. vCenter applies the spec to VirtualApp.vAppConfig:
//     entityConfig (per child VM or vApp: tag, startOrder, startDelay,
//     waitingForGuest, startAction, stopDelay, stopAction, destroyWithParent),
//     product and property (ArrayUpdateSpec add/edit/remove by key), ipAssignment,
//     eula, ovfEnvironmentTransport, installBoot*, annotation (vSphere API,
//     VirtualApp.UpdateVAppConfig, VAppConfigSpec, VAppEntityConfigInfo: "the
//     behavior of an entity (virtual machine or sub-vApp container) in a vApp
//     container").
//   - CreateVApp keeps only the spec's annotation and product: the rest of the
//     VAppConfigSpec is applied here as by UpdateVAppConfig.
//   - CreateVApp on a vApp (a nested vApp): the simulator links the child to a
//     copy of the parent, so the parent's resourcePool never lists it; we add it.
//     As on vCenter, a child vApp has parentVApp set and no parentFolder ("This
//     is only set for a root vApp", VirtualApp.parentFolder); the simulator's
//     own CreateChildVM_Task needs parentFolder, so it stays set.
//   - Folder.CreateVM_Task with a vApp as the pool is refused: "A virtual
//     machine in a vApp is not associated with a VM folder and therefore cannot
//     be created using the method on a Folder" (vSphere API,
//     ResourcePool.CreateChildVM_Task); the simulator accepts it.
type vappConfig struct {
	next http.Handler
	auth *quiesceFault
}

func newVappConfig(next http.Handler) http.Handler {
	return &vappConfig{next: next, auth: &quiesceFault{next: next}}
}

type updateVAppConfigBody struct {
	Res *types.UpdateVAppConfigResponse `xml:"urn:vim25 UpdateVAppConfigResponse"`
}

func (v *vappConfig) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	switch {
	case bytes.Contains(body, []byte("UpdateVAppConfig")):
		v.update(w, r, body)
	case bytes.Contains(body, []byte("CreateVApp")):
		v.create(w, r, body)
	case bytes.Contains(body, []byte("<CreateVM_Task")) && bytes.Contains(body, []byte("VirtualApp")):
		v.createVM(w, r, body)
	default:
		v.next.ServeHTTP(w, r)
	}
}

func (v *vappConfig) update(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.UpdateVAppConfig
	if err == nil {
		req, _ = method.Body.(*types.UpdateVAppConfig)
	}
	if req == nil {
		v.next.ServeHTTP(w, r)
		return
	}
	app, ok := simulator.Map.Get(req.This).(*simulator.VirtualApp)
	if !ok || !v.auth.authenticated(r) {
		r.Body = bytesReader(body)
		v.next.ServeHTTP(w, r) // the simulator's own fault (NotAuthenticated, not implemented)
		return
	}
	var fault types.BaseMethodFault
	simulator.Map.WithLock(app, func() { fault = applyVAppSpec(app, &req.Spec, true) })
	if fault != nil {
		writeFault(w, fmt.Sprintf("vcsim: UpdateVAppConfig: %T", fault), fault)
		return
	}
	writeEnvelope(w, http.StatusOK, &updateVAppConfigBody{Res: &types.UpdateVAppConfigResponse{}})
}

func (v *vappConfig) createVM(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.CreateVM_Task
	if err == nil {
		req, _ = method.Body.(*types.CreateVM_Task)
	}
	if req == nil || req.Pool.Type != "VirtualApp" || !v.auth.authenticated(r) {
		r.Body = bytesReader(body)
		v.next.ServeHTTP(w, r)
		return
	}
	writeFault(w, "vcsim: a VM in a vApp is created with the vApp's CreateChildVM_Task, not Folder.CreateVM_Task",
		&types.InvalidArgument{InvalidProperty: "pool"})
}

func (v *vappConfig) create(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := decodeRequest(body)
	var req *types.CreateVApp
	if err == nil {
		req, _ = method.Body.(*types.CreateVApp)
	}
	rec := newRecorder()
	v.next.ServeHTTP(rec, r)
	defer rec.flush(w)
	if req == nil || rec.status != http.StatusOK {
		return
	}
	ref, ok := rec.returnval()
	if !ok {
		return
	}
	child, ok := simulator.Map.Get(ref).(*simulator.VirtualApp)
	if !ok {
		return
	}
	if parent, ok := simulator.Map.Get(req.This).(*simulator.VirtualApp); ok {
		simulator.Map.WithLock(parent, func() {
			// Not AppendReference: it takes this lock again.
			parent.ResourcePool.ResourcePool = append(parent.ResourcePool.ResourcePool, child.Self)
		})
		simulator.Map.WithLock(child, func() {
			p := parent.Self
			child.ParentVApp = &p
		})
	}
	rest := req.ConfigSpec
	rest.Product, rest.Annotation = nil, "" // the simulator applied these two
	simulator.Map.WithLock(child, func() { _ = applyVAppSpec(child, &rest, false) })
}

// applyVAppSpec applies spec to app.VAppConfig (the caller holds app's lock) and
// publishes the change to property collectors. A fault leaves the config as it was.
func applyVAppSpec(app *simulator.VirtualApp, spec *types.VAppConfigSpec, validate bool) types.BaseMethodFault {
	cfg := types.VAppConfigInfo{}
	if app.VAppConfig != nil {
		cfg = *app.VAppConfig
	}
	children := map[types.ManagedObjectReference]bool{}
	for _, ref := range app.Vm {
		children[ref] = true
	}
	for _, ref := range app.ResourcePool.ResourcePool {
		children[ref] = true
	}
	entities := append([]types.VAppEntityConfigInfo(nil), cfg.EntityConfig...)
	for _, e := range spec.EntityConfig {
		if e.Key == nil || (validate && !children[*e.Key]) {
			// Only the vApp's own VMs and child vApps have an entity config.
			return &types.InvalidArgument{InvalidProperty: "spec.entityConfig.key"}
		}
		found := false
		for i := range entities {
			if entities[i].Key != nil && *entities[i].Key == *e.Key {
				entities[i] = mergeEntity(entities[i], e)
				found = true
			}
		}
		if !found {
			entities = append(entities, e)
		}
	}
	products, fault := updateProducts(cfg.Product, spec.Product)
	if fault != nil {
		return fault
	}
	props, fault := updateProperties(cfg.Property, spec.Property)
	if fault != nil {
		return fault
	}
	cfg.EntityConfig, cfg.Product, cfg.Property = entities, products, props
	if spec.IpAssignment != nil {
		cfg.IpAssignment = *spec.IpAssignment
	}
	if spec.Annotation != "" {
		cfg.Annotation = spec.Annotation
	}
	if spec.Eula != nil {
		cfg.Eula = spec.Eula
	}
	if spec.OvfEnvironmentTransport != nil {
		cfg.OvfEnvironmentTransport = spec.OvfEnvironmentTransport
	}
	if spec.InstallBootRequired != nil {
		cfg.InstallBootRequired = *spec.InstallBootRequired
	}
	if spec.InstallBootStopDelay != 0 {
		cfg.InstallBootStopDelay = spec.InstallBootStopDelay
	}
	simulator.Map.Update(app, []types.PropertyChange{{Name: "vAppConfig", Val: &cfg}})
	app.VAppConfig = &cfg
	return nil
}

// mergeEntity sets the fields e gives on old (vCenter edits an entity config in place).
func mergeEntity(old, e types.VAppEntityConfigInfo) types.VAppEntityConfigInfo {
	if e.Tag != "" {
		old.Tag = e.Tag
	}
	if e.StartOrder != 0 {
		old.StartOrder = e.StartOrder
	}
	if e.StartDelay != 0 {
		old.StartDelay = e.StartDelay
	}
	if e.WaitingForGuest != nil {
		old.WaitingForGuest = e.WaitingForGuest
	}
	if e.StartAction != "" {
		old.StartAction = e.StartAction
	}
	if e.StopDelay != 0 {
		old.StopDelay = e.StopDelay
	}
	if e.StopAction != "" {
		old.StopAction = e.StopAction
	}
	if e.DestroyWithParent != nil {
		old.DestroyWithParent = e.DestroyWithParent
	}
	return old
}

func removeKey(key types.AnyType) (int32, bool) {
	switch k := key.(type) {
	case int32:
		return k, true
	case int:
		return int32(k), true
	case int64:
		return int32(k), true
	}
	return 0, false
}

// updateProducts applies ArrayUpdateSpecs (add: the key must be new; edit and
// remove: the key must exist), as vCenter's ArrayUpdateSpec semantics say.
func updateProducts(cur []types.VAppProductInfo, specs []types.VAppProductSpec) ([]types.VAppProductInfo, types.BaseMethodFault) {
	out := append([]types.VAppProductInfo(nil), cur...)
	for _, s := range specs {
		idx := -1
		var key int32
		if s.Operation == types.ArrayUpdateOperationRemove {
			k, ok := removeKey(s.RemoveKey)
			if !ok {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.product.removeKey"}
			}
			key = k
		} else {
			if s.Info == nil {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.product.info"}
			}
			key = s.Info.Key
		}
		for i := range out {
			if out[i].Key == key {
				idx = i
			}
		}
		switch s.Operation {
		case types.ArrayUpdateOperationAdd:
			if idx >= 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.product.info.key"}
			}
			out = append(out, *s.Info)
		case types.ArrayUpdateOperationEdit:
			if idx < 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.product.info.key"}
			}
			out[idx] = *s.Info
		case types.ArrayUpdateOperationRemove:
			if idx < 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.product.removeKey"}
			}
			out = append(out[:idx], out[idx+1:]...)
		}
	}
	return out, nil
}

func updateProperties(cur []types.VAppPropertyInfo, specs []types.VAppPropertySpec) ([]types.VAppPropertyInfo, types.BaseMethodFault) {
	out := append([]types.VAppPropertyInfo(nil), cur...)
	for _, s := range specs {
		idx := -1
		var key int32
		if s.Operation == types.ArrayUpdateOperationRemove {
			k, ok := removeKey(s.RemoveKey)
			if !ok {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.property.removeKey"}
			}
			key = k
		} else {
			if s.Info == nil {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.property.info"}
			}
			key = s.Info.Key
		}
		for i := range out {
			if out[i].Key == key {
				idx = i
			}
		}
		switch s.Operation {
		case types.ArrayUpdateOperationAdd:
			if idx >= 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.property.info.key"}
			}
			out = append(out, *s.Info)
		case types.ArrayUpdateOperationEdit:
			if idx < 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.property.info.key"}
			}
			out[idx] = *s.Info
		case types.ArrayUpdateOperationRemove:
			if idx < 0 {
				return nil, &types.InvalidArgument{InvalidProperty: "spec.property.removeKey"}
			}
			out = append(out[:idx], out[idx+1:]...)
		}
	}
	return out, nil
}

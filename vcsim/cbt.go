package main

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"path"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// cbt emulates Changed Block Tracking, which govmomi 0.24.2's simulator lacks.
//
// It is an HTTP layer in front of the simulator's mux: SOAP calls it cares
// about are decoded here, the simulator still runs them (so authentication,
// locking and task bookkeeping stay the simulator's), and our part is done on
// the simulator's objects before the client sees the answer. Everything else
// passes through untouched. See docs/vcsim.md for the behaviour.
type cbt struct {
	next   http.Handler
	grain  int
	window int64
	track  *tracker
}

// checkCBTFlags validates -cbt-block and -cbt-window.
func checkCBTFlags(grain int, window int64) error {
	if grain <= 0 || grain%512 != 0 {
		return fmt.Errorf("-cbt-block must be a positive multiple of 512, got %d", grain)
	}
	if window < int64(grain) {
		return fmt.Errorf("-cbt-window must be at least -cbt-block (%d), got %d", grain, window)
	}
	return nil
}

// newCBT wraps next; the flags must have passed checkCBTFlags.
func newCBT(next http.Handler, grain int, window int64) *cbt {
	c := &cbt{next: next, grain: grain, window: window, track: newTracker()}
	markCBTSupported()
	return c
}

// The methods we intercept; a cheap substring test spares every other call a
// second XML decode.
var (
	interceptMarkers = [][]byte{
		[]byte("CreateSnapshot_Task"), []byte("ReconfigVM_Task"), []byte("QueryChangedDiskAreas"),
		[]byte("VM_Task"), []byte("ImportVApp"), []byte("CloneVApp_Task"), []byte("InstantClone_Task"),
	}
	// Methods that may create VMs, which must then advertise CBT support.
	createsVMs = map[string]bool{
		"CreateVM_Task": true, "CloneVM_Task": true, "RegisterVM_Task": true,
		"CreateChildVM_Task": true, "ImportVApp": true, "CloneVApp_Task": true,
		"InstantClone_Task": true,
	}
)

func (c *cbt) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	if !containsAny(body, interceptMarkers) {
		c.next.ServeHTTP(w, r)
		return
	}
	method, err := decodeRequest(body)
	if err != nil {
		c.next.ServeHTTP(w, r) // let the simulator report the malformed request
		return
	}
	switch req := method.Body.(type) {
	case *types.CreateSnapshot_Task:
		c.createSnapshot(w, r, req)
	case *types.ReconfigVM_Task:
		c.reconfigure(w, r, req)
	case *types.QueryChangedDiskAreas:
		c.queryChangedDiskAreas(w, r, req)
	case *types.CloneVM_Task:
		c.cloneVM(w, r, req)
	default:
		if !createsVMs[method.Name] {
			c.next.ServeHTTP(w, r)
			return
		}
		rec := c.pass(r)
		markCBTSupported()
		if res, ok := taskResult(rec); ok {
			if ref, ok := res.(types.ManagedObjectReference); ok {
				clearChangeIDs(ref)
			}
		}
		rec.flush(w)
	}
}

// cloneVM runs CloneVM_Task, which in 0.24.2 hands the source VM's device
// objects to the clone and then renames their files: the source is given back
// a copy of its devices as they were before the clone.
func (c *cbt) cloneVM(w http.ResponseWriter, r *http.Request, req *types.CloneVM_Task) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		c.next.ServeHTTP(w, r)
		return
	}
	var saved []types.BaseVirtualDevice
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			saved = deepCopy(vm.Config.Hardware.Device).([]types.BaseVirtualDevice)
		}
	})
	rec := c.pass(r)
	defer rec.flush(w)
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil && saved != nil {
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: saved}})
		}
	})
	markCBTSupported()
	if res, ok := taskResult(rec); ok {
		if ref, ok := res.(types.ManagedObjectReference); ok {
			clearChangeIDs(ref)
		}
	}
}

// clearChangeIDs empties the changeIds a new VM's disks may have copied from
// their source (CloneVM_Task copies backings): the simulator has no history
// for them, and a real new VM has no changeId before its first snapshot.
func clearChangeIDs(ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		empty := ""
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok {
				setChangeID(disk.Backing, &empty)
			}
		}
	})
}

func containsAny(b []byte, subs [][]byte) bool {
	for _, s := range subs {
		if bytes.Contains(b, s) {
			return true
		}
	}
	return false
}

// pass runs the request through the simulator, keeping its answer.
func (c *cbt) pass(r *http.Request) *recorder {
	rec := newRecorder()
	c.next.ServeHTTP(rec, r)
	return rec
}

// taskResult returns the result of the task a *_Task call answered with,
// when it succeeded. 0.24.2 runs tasks to completion before answering.
// createdSnapshot is the VM and its new snapshot, when the CreateSnapshot_Task the
// simulator answered in rec succeeded.
func createdSnapshot(
	rec *recorder, req *types.CreateSnapshot_Task,
) (*simulator.VirtualMachine, *simulator.VirtualMachineSnapshot, bool) {
	res, ok := taskResult(rec)
	if !ok {
		return nil, nil, false
	}
	snapRef, ok := res.(types.ManagedObjectReference)
	if !ok {
		return nil, nil, false
	}
	vm, ok1 := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	snap, ok2 := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	return vm, snap, ok1 && ok2
}

func taskResult(rec *recorder) (types.AnyType, bool) {
	if rec.status != http.StatusOK {
		return nil, false
	}
	ref, ok := rec.returnval()
	if !ok {
		return nil, false
	}
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, false
	}
	var res types.AnyType
	var state types.TaskInfoState
	simulator.Map.WithLock(task, func() { res, state = task.Info.Result, task.Info.State })
	return res, state == types.TaskInfoStateSuccess
}

// markCBTSupported makes every VM advertise capability.changeTrackingSupported.
func markCBTSupported() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			if vm.Capability.ChangeTrackingSupported == nil {
				vm.Capability.ChangeTrackingSupported = types.NewBool(true)
			}
		})
	}
}

// diskInfo is what we need of one virtual disk, read under the VM's lock.
type diskInfo struct {
	key      int32
	fileName string // datastore path: "[LocalDS_0] vm/disk1.vmdk"
	capacity int64
	tracked  bool // the backing can carry a changeId
}

func disksOf(devices []types.BaseVirtualDevice) []diskInfo {
	var out []diskInfo
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		info := diskInfo{key: disk.Key, capacity: disk.CapacityInBytes, tracked: setChangeID(disk.Backing, nil)}
		if info.capacity == 0 {
			info.capacity = disk.CapacityInKB * 1024
		}
		if fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			info.fileName = fb.GetVirtualDeviceFileBackingInfo().FileName
		}
		out = append(out, info)
	}
	return out
}

// setChangeID sets a disk backing's changeId when id is not nil, and reports
// whether the backing is one CBT tracks (physical-mode RDMs are not).
func setChangeID(b types.BaseVirtualDeviceBackingInfo, id *string) bool {
	var field *string
	switch x := b.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		field = &x.ChangeId
	case *types.VirtualDiskSparseVer2BackingInfo:
		field = &x.ChangeId
	case *types.VirtualDiskSeSparseBackingInfo:
		field = &x.ChangeId
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		if x.CompatibilityMode == string(types.VirtualDiskCompatibilityModePhysicalMode) {
			return false
		}
		field = &x.ChangeId
	default:
		return false
	}
	if id != nil {
		*field = *id
	}
	return true
}

func findDisk(devices []types.BaseVirtualDevice, key int32) *types.VirtualDisk {
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == key {
			return disk
		}
	}
	return nil
}

// flatFile maps a disk's datastore path to the local file holding its data,
// as the simulator names it: "[ds] dir/name.vmdk" → <ds url>/dir/name-flat.vmdk.
func flatFile(host *types.ManagedObjectReference, fileName string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(fileName) {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	if host == nil {
		return "", fmt.Errorf("%s: the VM has no host", fileName)
	}
	h, ok := simulator.Map.Get(*host).(*simulator.HostSystem)
	if !ok {
		return "", fmt.Errorf("%s: host %s not found", fileName, host.Value)
	}
	ds, ok := simulator.Map.FindByName(p.Datastore, h.Datastore).(*simulator.Datastore)
	if !ok {
		return "", fmt.Errorf("%s: datastore %q not found", fileName, p.Datastore)
	}
	local := path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
	return strings.Replace(local, ".vmdk", "-flat.vmdk", 1), nil
}

func isTrue(b *bool) bool { return b != nil && *b }

// createSnapshot runs CreateSnapshot_Task, then gives the snapshot a
// ConfigInfo of its own and, with CBT on, a changeId per disk.
func (c *cbt) createSnapshot(w http.ResponseWriter, r *http.Request, req *types.CreateSnapshot_Task) {
	rec := c.pass(r)
	defer rec.flush(w)
	vm, snap, ok := createdSnapshot(rec, req)
	if !ok {
		return
	}

	var on bool
	var disks []diskInfo
	var host *types.ManagedObjectReference
	// Snapshot before VM: the simulator's RemoveSnapshot_Task locks in that order.
	simulator.Map.WithLock(snap, func() {
		simulator.Map.WithLock(vm, func() {
			snap.Config = deepCopy(snap.Config).(types.VirtualMachineConfigInfo)
			on = isTrue(vm.Config.ChangeTrackingEnabled)
			disks = disksOf(vm.Config.Hardware.Device)
			host = vm.Runtime.Host
		})
	})
	if !on {
		return
	}

	ids := map[int32]string{}
	for _, d := range disks {
		if !d.tracked {
			continue
		}
		file, err := flatFile(host, d.fileName)
		if err != nil {
			log.Printf("cbt: %s: %v", vm.Self.Value, err)
			continue
		}
		blocks, err := hashFile(file, d.capacity, c.grain)
		if err != nil {
			log.Printf("cbt: %s: hashing %s: %v", vm.Self.Value, file, err)
			continue
		}
		ids[d.key] = c.track.record(vm.Self.Value, snap.Self.Value, d.key, blocks)
	}

	simulator.Map.WithLock(snap, func() {
		for key, id := range ids {
			if disk := findDisk(snap.Config.Hardware.Device, key); disk != nil {
				id := id
				setChangeID(disk.Backing, &id)
			}
		}
	})
	simulator.Map.WithLock(vm, func() {
		for key, id := range ids {
			if disk := findDisk(vm.Config.Hardware.Device, key); disk != nil {
				id := id
				setChangeID(disk.Backing, &id)
			}
		}
		// Through Update, so WaitForUpdatesEx watchers hear of the new changeIds.
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
		})
	})
}

// reconfigure runs ReconfigVM_Task; when it turns CBT off or on, the VM's
// disks start a new tracking epoch (a new UUID part) and, when off, lose
// their changeIds.
func (c *cbt) reconfigure(w http.ResponseWriter, r *http.Request, req *types.ReconfigVM_Task) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok || req.Spec.ChangeTrackingEnabled == nil {
		c.next.ServeHTTP(w, r)
		return
	}
	var before, after bool
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil {
			before = isTrue(vm.Config.ChangeTrackingEnabled)
		}
	})
	rec := c.pass(r)
	defer rec.flush(w)
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		after = isTrue(vm.Config.ChangeTrackingEnabled)
		if before == after {
			return
		}
		c.track.reset(vm.Self.Value)
		if after {
			return
		}
		empty := ""
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok {
				setChangeID(disk.Backing, &empty)
			}
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
		})
	})
}

// queryChangedDiskAreas answers QueryChangedDiskAreas from the block hashes
// recorded at snapshots.
func (c *cbt) queryChangedDiskAreas(w http.ResponseWriter, r *http.Request, req *types.QueryChangedDiskAreas) {
	// The simulator checks the session and that the VM exists; the method
	// itself it lacks, so MethodNotFound is its "all is well" here.
	rec := c.pass(r)
	if !rec.isFault("MethodNotFound") {
		rec.flush(w)
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		writeFault(w, "not a VirtualMachine: "+req.This.String(), &types.InvalidArgument{InvalidProperty: "_this"})
		return
	}

	var snap *simulator.VirtualMachineSnapshot
	if req.Snapshot != nil {
		snap, ok = simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok {
			writeFault(w, "snapshot not found: "+req.Snapshot.Value,
				&types.ManagedObjectNotFound{Obj: *req.Snapshot})
			return
		}
	}

	var on, found bool
	var disk diskInfo
	var host *types.ManagedObjectReference
	lookup := func(devices []types.BaseVirtualDevice) {
		for _, d := range disksOf(devices) {
			if d.key == req.DeviceKey {
				disk, found = d, true
			}
		}
	}
	wrongVM := false
	if snap != nil {
		simulator.Map.WithLock(snap, func() {
			wrongVM = snap.Vm != vm.Self
			lookup(snap.Config.Hardware.Device)
		})
	}
	simulator.Map.WithLock(vm, func() {
		on = vm.Config != nil && isTrue(vm.Config.ChangeTrackingEnabled)
		host = vm.Runtime.Host
		if snap == nil && vm.Config != nil {
			lookup(vm.Config.Hardware.Device)
		}
	})
	switch {
	case wrongVM:
		writeFault(w, fmt.Sprintf("snapshot %s is not a snapshot of %s", snap.Self.Value, vm.Self.Value),
			&types.InvalidArgument{InvalidProperty: "snapshot"})
		return
	case !found:
		writeFault(w, fmt.Sprintf("%s has no virtual disk with key %d", vm.Self.Value, req.DeviceKey),
			&types.InvalidArgument{InvalidProperty: "deviceKey"})
		return
	case req.StartOffset < 0 || req.StartOffset >= disk.capacity:
		writeFault(w, fmt.Sprintf("startOffset %d is outside the disk (capacity %d bytes)",
			req.StartOffset, disk.capacity), &types.InvalidArgument{InvalidProperty: "startOffset"})
		return
	}
	fileFault := func(why string) {
		writeFault(w, fmt.Sprintf("Error caused by file %s: %s", disk.fileName, why),
			&types.FileFault{File: disk.fileName})
	}
	if !on || !disk.tracked {
		fileFault("change tracking is not active for this disk")
		return
	}

	var cur blockMap
	if snap != nil {
		var have bool
		_, cur, have = c.track.snapshotState(vm.Self.Value, snap.Self.Value, disk.key)
		if !have {
			fileFault("the snapshot holds no change tracking information for this disk")
			return
		}
	} else {
		file, err := flatFile(host, disk.fileName)
		if err == nil {
			cur, err = hashFile(file, disk.capacity, c.grain)
		}
		if err != nil {
			fileFault(err.Error())
			return
		}
	}

	var base blockMap // nil: "*", everything that is not zero
	if req.ChangeId != "*" {
		var have bool
		if base, have = c.track.lookup(vm.Self.Value, disk.key, req.ChangeId); !have {
			fileFault(fmt.Sprintf("changeId %q is not known for this disk", req.ChangeId))
			return
		}
	}

	end := req.StartOffset + c.window
	if end > disk.capacity {
		end = disk.capacity
	}
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: end - req.StartOffset}
	for _, e := range changedExtents(base, cur, c.grain, req.StartOffset, end) {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: e.start, Length: e.length})
	}
	writeDiskChangeInfo(w, info)
}

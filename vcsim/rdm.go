package main

import (
	"net/http"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// snapshotRDM makes snapshots of chosen VMs list a physical-compatibility RDM
// disk, as the snapshot of a VM with a pass-through LUN does on ESXi (the LUN
// itself is not part of the snapshot). govmomi 0.24.2 cannot hold an RDM on a
// VM: its disk layout code takes every disk backing for a flat one and panics.
// Adding the device only to the snapshot's own ConfigInfo (a deep copy, see
// cbt.go) lets a backup client meet the RDM where it reads it, through the
// snapshot's config, while the VM itself stays one the simulator can run.
type snapshotRDM struct {
	next http.Handler
	glob string // path.Match pattern on the VM's name
}

// rdmKey is the RDM's device key: far from the simulator's own keys.
const rdmKey = 2099

func newSnapshotRDM(next http.Handler, glob string) http.Handler {
	if glob == "" {
		return next
	}
	if _, err := path.Match(glob, ""); err != nil {
		fail("-snapshot-rdm: %q is not a valid name pattern: %v", glob, err)
	}
	return &snapshotRDM{next: next, glob: glob}
}

func (s *snapshotRDM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	req := createSnapshotCall(body)
	if req == nil {
		s.next.ServeHTTP(w, r)
		return
	}
	rec := newRecorder()
	s.next.ServeHTTP(rec, r)
	defer rec.flush(w)
	vm, snap, ok := createdSnapshot(rec, req)
	if !ok {
		return
	}
	var name, dir string
	simulator.Map.WithLock(vm, func() { name, dir = vm.Name, vm.Config.Files.VmPathName })
	if match, _ := path.Match(s.glob, name); !match {
		return
	}
	if i := strings.LastIndex(dir, "/"); i >= 0 {
		dir = dir[:i]
	}
	simulator.Map.WithLock(snap, func() {
		devices := snap.Config.Hardware.Device
		ctrl, unit, ok := freeSCSIUnit(devices)
		if !ok {
			return
		}
		snap.Config.Hardware.Device = append(devices, &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           rdmKey,
				DeviceInfo:    &types.Description{Label: "Hard disk (RDM)", Summary: "1,024 KB"},
				ControllerKey: ctrl,
				UnitNumber:    &unit,
				Backing: &types.VirtualDiskRawDiskMappingVer1BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
						FileName: dir + "/" + name + "_rdm.vmdk",
					},
					LunUuid:           "0200000000600508b1001c0123456789abcdef0123",
					DeviceName:        "vml.0200000000600508b1001c0123456789abcdef0123",
					CompatibilityMode: string(types.VirtualDiskCompatibilityModePhysicalMode),
					DiskMode:          string(types.VirtualDiskModeIndependent_persistent),
				},
			},
			CapacityInKB:    1024,
			CapacityInBytes: 1024 * 1024,
		})
	})
}

// freeSCSIUnit is the first SCSI controller's key and its first unit number
// no device uses (7 is the controller's own).
func freeSCSIUnit(devices []types.BaseVirtualDevice) (int32, int32, bool) {
	for _, d := range devices {
		c, ok := d.(types.BaseVirtualSCSIController)
		if !ok {
			continue
		}
		key := c.GetVirtualSCSIController().Key
		used := map[int32]bool{7: true}
		for _, o := range devices {
			dev := o.GetVirtualDevice()
			if dev.ControllerKey == key && dev.UnitNumber != nil {
				used[*dev.UnitNumber] = true
			}
		}
		for u := int32(0); u < 16; u++ {
			if !used[u] {
				return key, u, true
			}
		}
	}
	return 0, 0, false
}

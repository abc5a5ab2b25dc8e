package main

import (
	"archive/zip"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// vssManifest emulates what ESXi does after a quiesced snapshot of a Windows
// guest: VMware Tools run VSS as the requester and hostd stores the result, a
// zip of the backup components document and the writer manifests, in the VM's
// snapshot directory as "<vm>-vss_manifests<N>.zip", and publishes its path,
// relative to the snapshot directory, in the snapshot tree node's
// backupManifest ("The relative path from the snapshotDirectory pointing to the
// backup manifest. Available for certain quiesced snapshots only", vSphere API,
// VirtualMachineSnapshotTree; VDDK guide, "Working with Microsoft Shadow Copy":
// "The VSS snapshot is created with the vss-manifest file, or without this file
// in the error case").
//
// govmomi's simulator leaves backupManifest empty and writes no file. Here a
// quiesced snapshot of a VM whose config.guestId names a Windows guest
// ("windows...") gets both; N is the snapshot's id in the tree. VMs matching
// -vss-fail model a VSS error: the snapshot is quiesced, but without manifest.
//
// The same layer keeps the tree's `quiesced` flag honest: "If the virtual
// machine is powered off or VMware Tools are not available, the quiesce flag is
// ignored" (vSphere API, CreateSnapshot_Task), and govmomi records quiesced=true
// regardless. A powered-off VM, or one matching -no-tools PATTERN (VMware Tools
// not running), gets quiesced=false and no manifest.
type vssManifest struct {
	next        http.Handler
	failGlob    string
	noToolsGlob string
}

func newVSSManifest(next http.Handler, failGlob, noToolsGlob string) http.Handler {
	for flag, glob := range map[string]string{"-vss-fail": failGlob, "-no-tools": noToolsGlob} {
		if glob == "" {
			continue
		}
		if _, err := path.Match(glob, ""); err != nil {
			fail("%s: %q is not a valid name pattern: %v", flag, glob, err)
		}
	}
	return &vssManifest{next: next, failGlob: failGlob, noToolsGlob: noToolsGlob}
}

func (v *vssManifest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := peekSOAP(w, r)
	if !ok {
		return
	}
	req := createSnapshotCall(body)
	if req == nil || !req.Quiesce {
		v.next.ServeHTTP(w, r)
		return
	}
	rec := newRecorder()
	v.next.ServeHTTP(rec, r)
	defer rec.flush(w)
	vm, snap, ok := createdSnapshot(rec, req)
	if !ok {
		return
	}
	var name, guest, vmx string
	var host *types.ManagedObjectReference
	var off bool
	simulator.Map.WithLock(vm, func() {
		name, guest, vmx, host = vm.Name, vm.Config.GuestId, vm.Config.Files.VmPathName, vm.Runtime.Host
		off = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff
		if vm.Config.Files.SnapshotDirectory != "" {
			vmx = strings.TrimSuffix(vm.Config.Files.SnapshotDirectory, "/") + "/x.vmx"
		}
	})
	if off || matches(v.noToolsGlob, name) {
		simulator.Map.WithLock(vm, func() {
			if node := snapshotNode(vm.Snapshot.RootSnapshotList, snap.Self); node != nil {
				node.Quiesced = false
				simulator.Map.Update(vm, []types.PropertyChange{
					{Name: "snapshot.rootSnapshotList", Val: vm.Snapshot.RootSnapshotList},
				})
			}
		})
		return
	}
	if !strings.HasPrefix(strings.ToLower(guest), "windows") {
		return // VSS is Windows only: other guests quiesce without a manifest
	}
	if v.failGlob != "" {
		if match, _ := path.Match(v.failGlob, name); match {
			return
		}
	}
	simulator.Map.WithLock(vm, func() {
		node := snapshotNode(vm.Snapshot.RootSnapshotList, snap.Self)
		if node == nil {
			return
		}
		file := fmt.Sprintf("%s-vss_manifests%d.zip", name, node.Id)
		dir, err := localDir(host, vmx)
		if err == nil {
			err = writeManifestZip(path.Join(dir, file), name, node.Id)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "vcsim: writing the VSS manifest of %s: %v\n", name, err)
			return
		}
		node.BackupManifest = file
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "snapshot.rootSnapshotList", Val: vm.Snapshot.RootSnapshotList},
		})
	})
}

func snapshotNode(tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference) *types.VirtualMachineSnapshotTree {
	for i := range tree {
		if tree[i].Snapshot == ref {
			return &tree[i]
		}
		if n := snapshotNode(tree[i].ChildSnapshotList, ref); n != nil {
			return n
		}
	}
	return nil
}

// localDir is the simulator's local directory of the datastore file's directory.
func localDir(host *types.ManagedObjectReference, dsFile string) (string, error) {
	local, err := flatFile(host, strings.TrimSuffix(dsFile, ".vmx")+".vmdk")
	if err != nil {
		return "", err
	}
	return path.Dir(local), nil
}

// writeManifestZip writes a zip shaped like the one VMware Tools leave: the
// backup components document plus one writer manifest.
func writeManifestZip(file, vm string, id int32) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(f)
	entries := map[string]string{
		"backupComponents.xml": fmt.Sprintf("<BACKUP_COMPONENTS vm=%q snapshot=\"%d\" backupType=\"VSS_BT_COPY\"/>\n", vm, id),
		"writerManifest0.xml":  "<WRITER_METADATA writerName=\"System Writer\"/>\n",
	}
	for _, n := range []string{"backupComponents.xml", "writerManifest0.xml"} {
		w, err := zw.Create(n)
		if err == nil {
			_, err = w.Write([]byte(entries[n]))
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

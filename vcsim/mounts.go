package main

// What real vCenter does: Datastore.host lists every host that mounts the datastore
// (DatastoreHostMount, one per host, with HostMountInfo mounted/accessible), the mirror
// of each HostSystem.datastore. govmomi's model creates a shared datastore once per host
// and keeps only the first host's mount in Datastore.host, so a client choosing a host
// that mounts a datastore would see one host where a real vCenter shows all of them.
// fixDatastoreMounts adds the missing mounts after the model is built.

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func fixDatastoreMounts() {
	for _, e := range simulator.Map.All("HostSystem") {
		host, ok := e.(*simulator.HostSystem)
		if !ok {
			continue
		}
		for _, ref := range host.Datastore {
			ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
			if !ok {
				continue
			}
			found := false
			for _, m := range ds.Host {
				if m.Key == host.Self {
					found = true
				}
			}
			if !found {
				ds.Host = append(ds.Host, types.DatastoreHostMount{
					Key: host.Self,
					MountInfo: types.HostMountInfo{
						AccessMode: string(types.HostMountModeReadWrite),
						Mounted:    types.NewBool(true),
						Accessible: types.NewBool(true),
					},
				})
			}
		}
	}
}

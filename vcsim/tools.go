package main

import (
	"path"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// setToolsRunning makes the VMs whose names match glob report VMware Tools as
// running (guest.toolsRunningStatus guestToolsRunning, toolsStatus toolsOk), as
// a VM with Tools installed and its guest up does. The simulator's own VMs all
// say guestToolsNotRunning, so a client's guest operations (ShutdownGuest,
// which the simulator carries out at once) could otherwise not be tested on
// the path a real client takes: check the Tools state first.
func setToolsRunning(glob string) {
	if glob == "" {
		return
	}
	if _, err := path.Match(glob, ""); err != nil {
		fail("-tools-running: %q is not a valid name pattern: %v", glob, err)
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if match, _ := path.Match(glob, vm.Name); !match {
			continue
		}
		if vm.Guest == nil {
			vm.Guest = &types.GuestInfo{}
		}
		vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		vm.Guest.ToolsStatus = types.VirtualMachineToolsStatusToolsOk
		if vm.Summary.Guest != nil {
			vm.Summary.Guest.ToolsStatus = vm.Guest.ToolsStatus
			vm.Summary.Guest.ToolsRunningStatus = vm.Guest.ToolsRunningStatus
		}
	}
}

"""A VM restored as new starts off the network: every network adapter of its ConfigSpec is
created disconnected (connectable.startConnected=false, connected=false), so a copy of a
running server — same addresses, same services, same hostname — does not join its
original's network on power-on. The admin connects it (`--connect-network`, or later in
vSphere) once it is known to be safe. Pure code: the spec in, the adapters changed out."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

NOTE = (
    "network adapters were left disconnected (a copy must not join its original's network); "
    "connect them in vSphere when safe, or restore with --connect-network"
)


def disconnect_network(spec: vim.vm.ConfigSpec) -> list[str]:
    """Set every added network adapter of `spec` to start and stay disconnected; returns the
    labels of the adapters changed (empty: the VM has none). The guest may still reconnect
    an adapter if allowGuestControl was saved as true: it is kept, as it is the original's
    setting and a guest acting on it is the admin's choice, not vigil's."""
    changed: list[str] = []
    for change in spec.deviceChange or []:
        dev: Any = change.device
        if change.operation != "add" or not isinstance(dev, vim.vm.device.VirtualEthernetCard):
            continue
        old = dev.connectable
        dev.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=False,
            connected=False,
            allowGuestControl=bool(old.allowGuestControl) if old is not None else False,
        )
        label = dev.deviceInfo.label if dev.deviceInfo is not None else f"device {dev.key}"
        changed.append(str(label))
    return changed

"""vigil's composition layer: it joins the four lower packages (watcher, policies, disk_io,
repository — which never import each other) into the backup and restore workflows, the
daemon and the CLI.

Layout, by role (each subpackage's __init__ says what it owns and may import):
- vsphere/  one place per vSphere question: snapshots, VM config and ConfigSpec, placement,
            VM lookup, disk access, datastore paths, connecting;
- backup/   backing up a VM or vApp;  restore/  restoring to the VM or as a new one;
- daemon/   `vigil watch`: planner, job runner and worker, pruner, status, composed;
- cli/      the `vigil` entry point, one module per command;
- devtools/ the bundled simulator and the demo (developer tooling, not used in production).
Shared by them, at this level: config, logs, errors, context (what a job opens), parallel
(bounded thread maps, cancellation-proof cleanup), vmlock, repoaccess and policyaccess
(the adapters to repository and policies; policyaccess builds backup.model.BackupOptions
from a policy), vappsets (vApp sets read back from the points' set records).

Import direction: cli → daemon → backup/restore → vsphere → shared modules → lower
packages; never upwards (devtools may use any of them; nothing imports devtools but the
`demo` command and the tests)."""

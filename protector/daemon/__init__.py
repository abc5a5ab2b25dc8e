"""The daemon (`vigil watch`): Daemon (daemon.py) composes small parts with one job each —
supervisor, sessions, state, planner, jobs + worker, pruner, views, status_server, metrics;
see daemon.py's docstring for the map. The planner, the job runner with its worker, and the
pruner each run without the others (the seam for the scheduler and worker roles).

May import: protector.backup, protector.vsphere, the shared protector modules (config,
context, policyaccess, repoaccess, vmlock, errors), policies, repository, watcher. Never
imports protector.cli or protector.restore."""

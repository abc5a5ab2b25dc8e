"""Developer tooling, not used in production: simulator.py builds and runs the bundled
vCenter simulator (Go sources: the checkout's vcsim/, or the copy a wheel ships here as
vcsim/), simtools.py makes VMs, folders and moves on it, demo.py is `vigil demo`'s tour.
The fake VixDiskLib lives with the tests (tests/vddk_fake/).

May import: any protector package (it drives the daemon and restore like a user would).
Imported only by the `demo` command (lazily) and the tests."""

# The two commands a newcomer needs: `make demo` and `make test`.
# Both install everything they need (apt packages as root, a venv) and are
# quick when it is already there.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# prometheus: only for promtool (Debian 12 has no smaller package with it); systemd: for
# `systemd-analyze security` on contrib/vigil.service (tests/install); the filesystem tools
# build the file-level restore tests' images; postgresql serves the cluster tests.
APT_PACKAGES := chromium golang-go golang-github-vmware-govmomi-dev gcc libc6-dev python3-venv \
	prometheus systemd e2fsprogs dosfstools mtools ntfs-3g xfsprogs btrfs-progs fdisk fuse3 \
	postgresql
BENCH_APT_PACKAGES := restic borgbackup
STAMP := $(VENV)/.installed

.PHONY: all deps apt venv vcsim test lint format demo bench clean install man completion

all: test

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(STAMP)

# Built (and cached by source hash) by the same code the tests and demo use.
vcsim: apt venv
	@$(BIN)/python -c "from protector.devtools.simulator import build; print('vcsim:', build())"

deps: apt venv vcsim

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: deps lint
	$(BIN)/python -m pytest -q

demo: deps
	$(BIN)/vigil demo

bench: deps
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(BIN)/python bench/run_all.py

# vigil.1 and the bash/zsh/tcsh completion scripts, generated from the parser into build/docs
# (install: vigil.1 to /usr/local/share/man/man1, vigil.bash to
# /etc/bash_completion.d/vigil, _vigil to a directory on zsh's $fpath).
man completion: venv
	$(BIN)/python -m protector.cli.docgen build/docs

# Install as a system service (docs/install.md): the `vigil` user, /etc/vigil,
# /var/lib/vigil, a venv in $(PREFIX)/venv and the hardened unit. DESTDIR stages the tree.
DESTDIR ?=
PREFIX ?= /opt/vigil
SYSCONFDIR ?= /etc/vigil
STATEDIR ?= /var/lib/vigil
UNITDIR ?= /etc/systemd/system
SERVICE_USER ?= vigil
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" STATEDIR="$(STATEDIR)" \
		UNITDIR="$(UNITDIR)" SERVICE_USER="$(SERVICE_USER)" contrib/install.sh

clean:
	rm -rf build $(VENV) .pytest_cache

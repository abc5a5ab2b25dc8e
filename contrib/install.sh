#!/bin/bash
# Install vigil as a system service: `make install` runs this (docs/install.md).
# Idempotent: a second run upgrades the venv and the unit and keeps the configuration,
# the policies and the repository as they are.
#
# Settings (environment; the Makefile passes its variables of the same names):
#   DESTDIR       stage the tree under this directory (packaging, tests); empty = the system
#   PREFIX        where the venv goes: $PREFIX/venv                      (/opt/vigil)
#   SYSCONFDIR    configuration: vigil.toml, env, policies.d/            (/etc/vigil)
#   STATEDIR      the service's state: the repository and its catalog   (/var/lib/vigil)
#   UNITDIR       the systemd unit                                      (/etc/systemd/system)
#   SERVICE_USER  the system user the daemon runs as                    (vigil)
#   CREATE_USER   yes/no: create SERVICE_USER (default: yes when run as root)
#   PYTHON        the Python (3.11+) the venv is made from        (/usr/bin/python3)
#                 (the system's: the service user must be able to read it, and
#                 ProtectHome= hides a Python under /root or /home)
#   PIP_ARGS      extra arguments for pip install (a wheel house, an index)
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/vigil}
SYSCONFDIR=${SYSCONFDIR:-/etc/vigil}
STATEDIR=${STATEDIR:-/var/lib/vigil}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SERVICE_USER=${SERVICE_USER:-vigil}
PYTHON=${PYTHON:-/usr/bin/python3}
PIP_ARGS=${PIP_ARGS:-}
if [ "$(id -u)" = 0 ]; then CREATE_USER=${CREATE_USER:-yes}; else CREATE_USER=${CREATE_USER:-no}; fi

# The venv must be readable by the service user whatever root's umask; the rest gets
# explicit modes below.
umask 022

case $STATEDIR in
/var/lib/?*) ;;
*) echo "vigil install: STATEDIR=$STATEDIR: must be under /var/lib (systemd's StateDirectory=)" >&2; exit 2 ;;
esac

say() { echo "vigil install: $*"; }
die() { echo "vigil install: $*" >&2; exit 2; }

# -- the service user: a system user, no login shell, home = the state directory ---------
if [ "$CREATE_USER" = yes ]; then
    [ "$(id -u)" = 0 ] || die "creating the user $SERVICE_USER needs root (or CREATE_USER=no)"
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "vigil backup daemon" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
fi
if [ "$(id -u)" = 0 ] && getent passwd "$SERVICE_USER" >/dev/null; then
    as_root_group=(-o root -g "$SERVICE_USER")   # root's, readable by the service
    as_service=(-o "$SERVICE_USER" -g "$SERVICE_USER")
    as_root=(-o root -g root)
else
    # Staging without root (or without the user): modes only; the package's postinst or a
    # later `make install` as root sets the owners.
    say "not root or no user $SERVICE_USER: setting modes only, not owners"
    as_root_group=() as_service=() as_root=()
fi

# -- /etc/vigil: root's, readable by the service's group ----------------------------------
etc=$DESTDIR$SYSCONFDIR
install -d -m 0750 "${as_root_group[@]}" "$etc" "$etc/policies.d"
if [ ! -e "$etc/vigil.toml" ]; then
    sed -e "s|/var/lib/vigil|$STATEDIR|g" -e "s|/etc/vigil|$SYSCONFDIR|g" \
        "$SRC/config.example.toml" >"$etc/vigil.toml.new"
    install -m 0640 "${as_root_group[@]}" "$etc/vigil.toml.new" "$etc/vigil.toml"
    rm -f "$etc/vigil.toml.new"
    say "wrote $SYSCONFDIR/vigil.toml: edit [vcenter] (docs/install.md)"
fi
# Examples only: a policy starts protecting VMs the moment it is a *.toml file.
for f in "$SRC"/policies.example/*.toml; do
    install -m 0640 "${as_root_group[@]}" "$f" "$etc/policies.d/$(basename "$f").example"
done
# Secrets for the unit's EnvironmentFile=: read by systemd as root, never by the service.
[ -e "$etc/env" ] || install -m 0600 "${as_root[@]}" /dev/null "$etc/env"

# -- /var/lib/vigil: the service's own -----------------------------------------------------
install -d -m 0700 "${as_service[@]}" "$DESTDIR$STATEDIR"

# -- the venv: root's, so the service cannot change its own code ---------------------------
venv=$DESTDIR$PREFIX/venv
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
"$venv/bin/python" -m pip install -q --disable-pip-version-check $PIP_ARGS "$SRC"
if [ -n "$DESTDIR" ]; then
    # A venv records its own path (script shebangs, activate): make it the installed one.
    grep -rlIF -- "$venv" "$venv/bin" "$venv/pyvenv.cfg" | while read -r f; do
        sed -i "s|$venv|$PREFIX/venv|g" "$f"
    done
    # ... and so do the compiled modules (file names in tracebacks).
    "$venv/bin/python" -m compileall -q -f -s "$DESTDIR" -p / "$venv/lib" >/dev/null
fi
say "installed vigil into $PREFIX/venv"
install -d -m 0755 "$DESTDIR$PREFIX/doc"
install -m 0644 "$SRC/README.md" "$SRC/docs/install.md" "$SRC/docs/policies.md" "$DESTDIR$PREFIX/doc/"

# -- the unit, pointing at what was installed above ---------------------------------------
unit=$DESTDIR$UNITDIR/vigil.service
install -d -m 0755 "$DESTDIR$UNITDIR"
sed -e "s|/opt/vigil/|$PREFIX/|g" -e "s|/etc/vigil|$SYSCONFDIR|g" \
    -e "s|/var/lib/vigil|$STATEDIR|g" -e "s|^User=vigil$|User=$SERVICE_USER|" \
    -e "s|^Group=vigil$|Group=$SERVICE_USER|" \
    -e "s|^StateDirectory=vigil$|StateDirectory=${STATEDIR#/var/lib/}|" \
    "$SRC/contrib/vigil.service" >"$unit.new"
install -m 0644 "${as_root[@]}" "$unit.new" "$unit"
rm -f "$unit.new"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "installed $UNITDIR/vigil.service; then: systemctl enable --now vigil"

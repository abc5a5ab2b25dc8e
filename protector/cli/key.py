"""`vigil key add|add-host|remove|list|passwd`: the repository's passphrases and host keys
(logic: repository/admin.py). New passphrases come from a file or an environment variable,
never from the command line; a host key is made by vigil in repository.key_file."""

from __future__ import annotations

import argparse
import socket
from dataclasses import replace
from typing import Any

from protector.cli.common import config_of, open_repository
from protector.cli.init import print_outcome
from protector.errors import UserError

NEW_ENV = "VIGIL_NEW_PASSPHRASE"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "key",
        help="add, remove, list or change the repository's passphrases and host keys",
        description="Each passphrase, and each host's key, opens a key slot (keys/<slot>) "
        "wrapping the one master key; the current passphrase comes from "
        "repository.passphrase_env / passphrase_file, a new one from "
        f"${NEW_ENV} or --file, never from the command line. A host key "
        "(repository.key_file) opens the repository on its host without the passphrase.",
    )
    sp = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    for name, text in (
        ("add", "add a passphrase (a new key slot)"),
        ("passwd", "replace the passphrase you opened with by a new one"),
    ):
        a = sp.add_parser(name, help=text, description=text + f"; read from ${NEW_ENV} or --file")
        a.add_argument("--file", help="read the new passphrase from the first line of FILE")
    sp.add_parser(
        "add-host",
        help="let this host open the repository with its own key (repository.key_file)",
        description="Create repository.key_file (32 random bytes written as 64 hex digits, "
        "mode 0600) if it is not "
        "there, and add a key slot it opens: every vigil process on this host then opens "
        "the repository in a millisecond, without the passphrase's Argon2id (~0.4 CPU-s) "
        "and without needing the passphrase at all. Opens with the passphrase once.",
    )
    sp.add_parser("list", help="list the key slots", description="List the key slots.")
    r = sp.add_parser(
        "remove",
        help="remove a key slot (not the one you opened with)",
        description="Remove a key slot: its passphrase, or its host's key, no longer opens "
        "the repository (`vigil key list` shows which is which). The master key stays: "
        "whoever held that secret and a copy of the storage could already have unwrapped "
        "it. The last passphrase slot is never removed. Needs the passphrase.",
    )
    r.add_argument("slot", metavar="SLOT", help="the slot name `vigil key list` shows")
    for action in sp.choices.values():
        action.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from protector.hostkey import create_host_key
    from repository import admin

    cfg = config_of(args)
    action = args.key_command
    rc = cfg.repository
    if action == "add-host" and not rc.key_file:
        raise UserError(
            f'set repository.key_file in {cfg.path} first (e.g. "/var/lib/vigil/repository.key"): '
            "`vigil key add-host` creates that file"
        )
    if action != "list" and rc.key_file:
        # Changing who may open the repository takes the passphrase, not this host's key:
        # a host must not be able to lock the admin's passphrase out (or, with add-host,
        # open with the key it is about to add).
        cfg = replace(cfg, repository=replace(rc, key_file=""))
    repo = await open_repository(cfg)

    def go() -> Any:
        if action == "list":
            return admin.key_list(repo)
        if action == "remove":
            return admin.key_remove(repo, args.slot)
        if action == "add-host":
            key, _made = create_host_key(rc.key_file, "repository.key_file", cfg.path)
            return admin.key_add_host(repo, key, socket.gethostname(), rc.key_file)
        new = admin.read_new_passphrase(NEW_ENV, args.file)
        return (admin.key_add if action == "add" else admin.key_passwd)(repo, new)

    out = await anyio.to_thread.run_sync(go)
    print_outcome(args, out)
    return out.exit_code

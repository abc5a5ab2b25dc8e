"""`vigil key add|remove|list|passwd`: the repository's passphrases (logic: repository/admin.py).
New passphrases come from a file or an environment variable, never from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from protector.cli.common import config_of, open_repository
from protector.cli.init import print_outcome

NEW_ENV = "VIGIL_NEW_PASSPHRASE"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "key",
        help="add, remove, list or change the repository's passphrases",
        description="Each passphrase opens a key slot (keys/<slot>) wrapping the one master "
        "key; the current passphrase comes from repository.passphrase_env / passphrase_file, "
        f"a new one from ${NEW_ENV} or --file, never from the command line.",
    )
    sp = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    for name, text in (
        ("add", "add a passphrase (a new key slot)"),
        ("passwd", "replace the passphrase you opened with by a new one"),
    ):
        a = sp.add_parser(name, help=text, description=text + f"; read from ${NEW_ENV} or --file")
        a.add_argument("--file", help="read the new passphrase from the first line of FILE")
    sp.add_parser("list", help="list the key slots", description="List the key slots.")
    r = sp.add_parser(
        "remove",
        help="remove a key slot (not the one you opened with)",
        description="Remove a key slot: its passphrase no longer opens the repository.",
    )
    r.add_argument("slot", metavar="SLOT", help="the slot name `vigil key list` shows")
    for action in sp.choices.values():
        action.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    import anyio

    from repository import admin

    repo = await open_repository(config_of(args))
    action = args.key_command

    def go() -> Any:
        if action == "list":
            return admin.key_list(repo)
        if action == "remove":
            return admin.key_remove(repo, args.slot)
        new = admin.read_new_passphrase(NEW_ENV, args.file)
        return (admin.key_add if action == "add" else admin.key_passwd)(repo, new)

    out = await anyio.to_thread.run_sync(go)
    print_outcome(args, out)
    return out.exit_code

"""Shell completion scripts and the man page, generated from the `vigil` parser itself, so
they list exactly the commands and options the program accepts (`make man completion`, or
`python -m protector.cli.docgen DIR`).

Completion uses shtab rather than argcomplete: shtab writes a static bash/zsh/tcsh script
once, at build time, while argcomplete starts Python and builds vigil's parser on every Tab
press (importing every command module: 1.7-2.7 s measured on the 2-core development machine,
`time python -c "from protector.cli.app import build_parser; build_parser()"`), and needs a
hook in the program's start-up. The man page uses argparse-manpage, which renders the same
parser (descriptions, options, epilogs with their examples) as roff."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protector.cli.app import build_parser, version

SHELLS = {"bash": "vigil.bash", "zsh": "_vigil", "tcsh": "vigil.tcsh"}


def completion(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    import shtab

    return shtab.complete(parser or build_parser(), shell=shell)  # type: ignore[no-any-return]


def manpage(parser: argparse.ArgumentParser | None = None) -> str:
    from argparse_manpage.manpage import Manpage

    page = Manpage(
        parser or build_parser(),
        _data={
            "project_name": "vigil",
            "version": version(),
            "description": "set-and-forget backup daemon for VMware vSphere",
            "manual_title": "vigil manual",
            "manual_section": 1,
        },
    )
    return str(page)


def write_all(outdir: Path) -> list[Path]:
    """vigil.1 and one completion script per shell in `outdir`; returns the files written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = [outdir / "vigil.1"]
    written[0].write_text(manpage())
    for shell, name in SHELLS.items():
        path = outdir / name
        path.write_text(completion(shell))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    outdir = Path(args[0] if args else "build/docs")
    for path in write_all(outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

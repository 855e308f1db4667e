"""safesample: behavior-aware, diverse selection of safety data for LLM fine-tuning."""

import os as _os
import signal as _signal
import sys as _sys

__version__ = "0.1.0"


def _interrupted_before_start(signum, frame):  # noqa: ARG001 - signal handler signature
    """Ctrl-C or SIGTERM while the program is still starting (importing its libraries, ~0.5 s):
    nothing has been read or written yet, so leave at once with the interrupt's exit status;
    `cli.main()` installs the handlers of a running command."""
    _os.write(2, b"error: interrupted before the command started; no output was written\n"
                 b"hint: run the command again\n")
    _os._exit(130)


# Only when this process is the `safesample` program (its console script, or `python -m
# safesample`), never when a library user or a test imports the package.
if _sys.argv and (_os.path.basename(_sys.argv[0]) == "safesample" or _sys.argv[0] == "-m"):
    for _sig in (_signal.SIGTERM, _signal.SIGINT):
        try:
            _signal.signal(_sig, _interrupted_before_start)
        except ValueError:  # not the main thread
            pass

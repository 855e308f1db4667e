"""The `safesample` command line: one place where all subcommands are registered.

Each command module parses its options and calls the stage logic; `main()` maps errors to
exit codes and `error:` / `hint:` lines.
"""

from __future__ import annotations

import functools
import signal
import sys
import traceback
from typing import Annotated, Any, Callable, Optional

import typer
# typer vendors its own click; its usage errors are these classes, not the `click` package's.
from typer._click import exceptions as click_errors

from safesample import __version__, console, stdio
from safesample.errors import (EXIT_CODES_HELP, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE,
                               SafesampleError, environment_error)
from safesample.cli import common
from safesample.stages import STAGES

HELP = f"""Pick a small, behavior-aware and diverse set of safety examples to mix into LLM
fine-tuning data, fine-tune with it, and judge the result.

Every command reads a table and writes one, so they chain in pipes:

\b
  safesample label pool.parquet -o - \\
    | safesample embed - -o - \\
    | safesample cluster - -o clustered.parquet

{EXIT_CODES_HELP}"""

app = typer.Typer(name="safesample", help=HELP, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)


class _ReaderClosed(Exception):
    """The reader of stdout went away (`| head`): raised in place of BrokenPipeError, which click
    would turn into exit status 1 before `main()` sees it."""


def _pipe_aware(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError as exc:
            raise _ReaderClosed() from exc
    return run


def _register(app: typer.Typer) -> None:
    """One subcommand per registered stage, from its CLI module (`safesample/cli/<name>.py`)."""
    import importlib

    for stage in STAGES:
        module = importlib.import_module(stage.cli_module)
        app.command(stage.name, help=module.HELP, no_args_is_help=True)(_pipe_aware(module.command))


_register(app)


def _version(value: bool) -> None:
    if value:
        print(f"safesample {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None) -> None:
    pass


def _error(message: str, hint: str | None) -> None:
    console.console.print(f"error: {message}", markup=False, style="bold red", soft_wrap=True)
    if hint:
        console.console.print(f"hint: {hint}", markup=False, soft_wrap=True)


_interrupted: str | None = None  # the signal that stopped this run, if any


class Interrupted(KeyboardInterrupt):
    """What our signal handler raises. A subclass on purpose: CPython notes a *bare*
    KeyboardInterrupt that leaves code run by a string exec() (dataclasses builds methods that
    way, so the imports of torch, numpy, huggingface_hub do it) and, at exit, kills the process
    with SIGINT even when main() caught the interrupt and returned 130 (the old flaky exit -2).
    Its check is for that exact type, so a subclass never trips it."""


def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
    global _interrupted
    _interrupted = signal.Signals(signum).name
    raise Interrupted


def _install_signal_handlers() -> None:
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps
    # ignoring it; `kill -INT` must stop a run like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            pass


def _interrupted_exit() -> int:
    why = f" ({_interrupted})" if _interrupted and _interrupted != "SIGINT" else ""
    _error(f"interrupted{why}; no output was written", "rerun the command to start again (a -o DIR/ run under "
           "--executor ray resumes from the shards it had finished)")
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    global _interrupted
    stdio.guard_streams()  # first: closed fds reopened, a broken stderr never fails the run
    _interrupted = None
    _install_signal_handlers()
    common.record_argv(argv)
    try:
        command = typer.main.get_command(app)  # in the try: a signal may arrive while it builds
        code = command.main(args=argv, prog_name="safesample", standalone_mode=False)
        if code == EXIT_INTERRUPTED or _interrupted:
            # typer turns KeyboardInterrupt into a silent exit code 130
            return _interrupted_exit()
        return code if isinstance(code, int) else 0
    except click_errors.NoArgsIsHelpError as exc:
        console.console.print(exc.ctx.get_help() if exc.ctx else str(exc), markup=False, highlight=False)
        return EXIT_USAGE
    except click_errors.UsageError as exc:
        where = f"safesample {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path \
            else "safesample"
        _error(exc.format_message(), f"see `{where} --help`")
        return EXIT_USAGE
    except typer.Abort:
        return _interrupted_exit()
    except SafesampleError as exc:
        if console.verbosity() >= console.VERBOSE:
            traceback.print_exc()
        _error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted_exit()
    except (BrokenPipeError, _ReaderClosed):
        # The reader downstream closed the pipe (e.g. `| head`): it has all it wanted, so this is
        # no failure (xsv and the coreutils do the same): exit quietly, with 0.
        _silence_stdout()
        return 0
    except Exception as exc:  # an unexpected failure: one line, traceback with -v
        if _interrupted:  # a library turned our KeyboardInterrupt into its own error
            return _interrupted_exit()
        if console.verbosity() >= console.VERBOSE:
            traceback.print_exc()
        mapped = environment_error(exc)  # the machine's doing (a full disk, a too long path): no bug
        if mapped is not None:
            _error(mapped.message, mapped.hint)
            return mapped.exit_code
        _error(f"{type(exc).__name__}: {exc}", "this looks like a bug; rerun with -v for the traceback "
               "and report it")
        return EXIT_ERROR
    finally:
        common.end_run()
        stdio.restore_stdout()
        stdio.unguard_streams()


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass

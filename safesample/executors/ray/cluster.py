"""The Ray cluster: joining one (or starting a local one bound to loopback), Ray's logs kept
quiet and on stderr, and what the workers need to behave like this process (its environment,
their CPU shares).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from safesample.errors import UsageError
from safesample.executors.base import ExecutorOptions
from safesample.reporter import SILENT, Reporter

# Environment the workers need to behave like this process (cache folder, offline hub).
_ENV_PREFIXES = ("SAFESAMPLE_", "HF_", "TRANSFORMERS_", "XDG_CACHE_HOME", "OMP_NUM_THREADS")
_started_here = False


def connect(ex: ExecutorOptions, reporter: Reporter = SILENT) -> float:
    """Join `ex.address` (else $RAY_ADDRESS, else start a local Ray); returns the seconds it took.

    Reuses a Ray already initialised in this process (tests share one per session). A local Ray,
    and a driver joining one at a loopback address, bind to 127.0.0.1 only (see `loopback`).
    """
    global _started_here

    _quiet_ray(ex)
    address = ex.resolved_address
    if not address or is_loopback(address):
        loopback()
    import ray

    if ray.is_initialized():
        _configure_data(ex)
        return 0.0
    start = time.monotonic()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not ex.quiet,
                              "logging_level": logging.INFO if ex.verbose else
                              logging.ERROR if ex.quiet else logging.WARNING}
    if address and address != "auto":
        _reachable(address)
    if address and address.startswith("ray://"):
        import importlib.util

        if importlib.util.find_spec("grpc") is None:  # Ray's client is an extra of its own
            raise UsageError(f"--ray-address {address} needs Ray's client, which is not installed",
                             "pip install 'safesample[ray]' (it brings 'ray[client]'), or join a cluster "
                             "from one of its nodes with its plain address")
    handlers = _signal_handlers()
    try:
        if address:
            # No job-wide runtime_env: with one, Ray starts the workers through its runtime env
            # agent (a plain actor took 1.6-1.8 s to start here, 0.3-1.6 s without). The stage
            # workers set worker_env() themselves, the vLLM processor gets it in its config.
            ray.init(address=address, **kwargs)
        else:
            ray.init(_node_ip_address=LOOPBACK, **kwargs)
            _started_here = True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                         f"{str(exc).splitlines()[0][:200]}",
                         "check --ray-address (e.g. ray://head:10001) or RAY_ADDRESS, and that the "
                         "cluster runs the same Ray version") from exc
    finally:
        _restore(handlers)
    _configure_data(ex)
    seconds = time.monotonic() - start
    reporter.debug(f"ray: connected to {address or 'a local instance'} in {seconds:.1f} s "
                   f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)")
    return seconds


LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 10.0  # a dead address fails this fast (Ray itself retries for minutes)


def _reachable(address: str) -> None:
    """Fail at once, naming the address, when nothing listens there (`ray.init` would retry for
    minutes before giving up)."""
    import socket

    target = re.sub(r"^[a-z]+://", "", address)
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT", "e.g. ray://head:10001 or 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(f"cannot connect to Ray at {address}: {exc.strerror or exc}",
                         "check --ray-address (e.g. ray://head:10001) or RAY_ADDRESS, and that the "
                         "cluster is up") from None


def _signal_handlers() -> dict[int, Any]:
    import signal

    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[int, Any]) -> None:
    """Ray's driver start-up installs its own SIGTERM handler (which dumps a C++ stack and exits
    15); keep this process's, so SIGTERM ends a run with exit 130 and its clean-up, as locally."""
    import signal

    for sig, handler in handlers.items():
        try:
            if handler is not None:
                signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass


def is_loopback(address: str) -> bool:
    host = re.sub(r"^[a-z]+://", "", address).rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def loopback() -> None:
    """Make Ray in this process (and the processes it starts) use 127.0.0.1 as the node address.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray replaces a loopback
    address by the machine's routable one (so other nodes could reach it) unless "clusters" are
    disabled, which is read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported. With it,
    the GCS, raylet and workers listen on 127.0.0.1 and every connection stays on loopback
    (checked with `ss -tnp`). Call it before `ray.init` of a local instance (`start_local`)."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported before: the flag was read already
        constants.ENABLE_RAY_CLUSTER = False


def start_local(num_cpus: int | None = None, **kwargs: Any) -> str:
    """Start a local Ray bound to loopback (benchmarks, tests); returns its address."""
    loopback()
    import ray

    ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, **kwargs)
    return ray.get_runtime_context().gcs_address


def shutdown() -> None:
    """Stop the local Ray this process started (not one it joined or a test's)."""
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


def _quiet_ray(ex: ExecutorOptions) -> None:
    import warnings

    # Ray Data warns (on stderr) when a small input has fewer blocks than workers: not news.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    level = logging.INFO if ex.verbose else logging.ERROR if ex.quiet else logging.WARNING
    for name in ("ray", "ray.data", "ray.llm"):
        logging.getLogger(name).setLevel(level)
    # Ray Data sets its loggers' levels again when a job starts, from this variable.
    os.environ["RAY_DATA_LOG_LEVEL"] = logging.getLevelName(level)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ex.verbose:  # two warnings every run prints, about settings chosen on purpose
        for name, text in _ROUTINE.items():
            logging.getLogger(name).addFilter(_Drop(text))


# Warnings of every run, not news: token authentication is on (what a cluster should have), and
# Ray Data's bars are off (we turn them off in a log, and on a terminal they are on).
_ROUTINE = {"ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
            "ray.data._internal.progress": "Progress bars disabled"}


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _configure_data(ex: ExecutorOptions) -> None:
    import sys

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order, as locally
    # Bars on a terminal only (on stderr), never with -q: in a log they are carriage-return noise.
    ctx.enable_progress_bars = not ex.quiet and sys.stderr.isatty()
    ctx.print_on_execution_start = ex.verbose
    ctx.enable_operator_progress_bars = ctx.enable_progress_bars


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def workers(ex: ExecutorOptions) -> int:
    return ex.concurrency or cpus()


def actor_cpus(concurrency: int, cpus: int) -> float:
    """CPUs each worker reserves: an equal share, at most one. The workers read their input and
    write their shards themselves, so no read or write task needs a CPU beside them."""
    import math

    return min(1.0, max(0.01, math.floor(100 * cpus / concurrency) / 100))

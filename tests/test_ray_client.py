"""`--ray-address ray://...` goes through Ray's client, an extra of its own (issue 26): the `ray`
extra installs it now, and without it the run stops at once with a usage error saying so,
instead of failing inside Ray."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from conftest import REPO, cli

POOL = REPO / "safesample" / "demo" / "safety_pool.jsonl"


def test_the_ray_extra_brings_the_client():
    text = (REPO / "pyproject.toml").read_text()
    assert 'ray[data,client]' in text


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs ray")
@pytest.mark.skipif(importlib.util.find_spec("grpc") is not None, reason="Ray's client is installed here")
def test_a_ray_client_address_without_the_client_is_a_usage_error(tmp_path: Path):
    with socket.socket() as server:  # something listens there, so the address itself is fine
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = tmp_path / "out.parquet"
        proc = cli("label", str(POOL), "--all-harmful", "--executor", "ray", "--ray-address",
                   f"ray://127.0.0.1:{port}", "-o", str(out), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "needs Ray's client" in proc.stderr and "hint:" in proc.stderr and not out.exists()

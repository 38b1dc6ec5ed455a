"""A server that only talks to its own page (issue 17, point 5): a WebSocket with a foreign Host header
(the DNS-rebinding shape, Origin matching the Host) is refused; the app's own names are accepted.  The server is
started by scripts/serve.py, whose warm-up (issue 15) must then report itself ready."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("serve", ROOT / "scripts" / "serve.py")
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)


def test_config_sets_allowed_hosts_and_hides_error_details():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
    assert set(cfg["server"]["allowedHosts"]) == {"localhost", "127.0.0.1", "::1"}
    assert cfg["client"]["showErrorDetails"] == "none"


def test_allowed_hosts_follow_the_bind_address():
    assert serve.allowed_hosts("localhost") == ["localhost", "127.0.0.1", "::1"]
    assert serve.allowed_hosts("10.1.2.3") == ["localhost", "127.0.0.1", "::1", "10.1.2.3"]
    wide = serve.allowed_hosts("0.0.0.0")
    assert wide[:3] == ["localhost", "127.0.0.1", "::1"] and socket.gethostname() in wide
    assert "*" not in wide


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _handshake(port: int, host: str) -> str:
    """'open' or the refusal, for a WebSocket to the app with this Host header and a matching Origin."""
    import websockets

    sock = socket.create_connection(("127.0.0.1", port))  # the name resolves here, as after a rebinding
    try:
        async with websockets.connect(f"ws://{host}:{port}/_stcore/stream", sock=sock, open_timeout=20,
                                      origin=f"http://{host}:{port}", subprotocols=["streamlit"]):
            return "open"
    except websockets.exceptions.InvalidStatus as exc:
        return f"refused {exc.response.status_code}"
    except websockets.exceptions.ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else ''}"


@pytest.mark.slow
def test_foreign_host_header_is_refused(tmp_path):
    port = _free_port()
    env = {**os.environ, "RELEVANCE_EXPLORER_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "RELEVANCE_EXPLORER_DB": str(tmp_path / "s.sqlite")}
    log = (tmp_path / "server.log").open("w")
    # the README's launcher itself (Streamlit in its process, after its warm-up thread has started)
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--address", "127.0.0.1", "--port",
                             str(port), "--server.headless", "true"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail((tmp_path / "server.log").read_text()[-2000:])
        results = {h: asyncio.run(_handshake(port, h)) for h in ("127.0.0.1", "localhost", "evil.example",
                                                                  "127.0.0.1.nip.io")}
        for _ in range(240):  # the warm-up (pages/warmup.py) ends with one line: ready, or why it stopped
            if "warm-up:" in (tmp_path / "server.log").read_text():
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert results["127.0.0.1"] == "open" and results["localhost"] == "open", results
    assert results["evil.example"] != "open" and results["127.0.0.1.nip.io"] != "open", results
    text = (tmp_path / "server.log").read_text()
    assert "warm-up: ready in" in text and "Traceback" not in text, text[-2000:]
    assert "missing ScriptRunContext" not in text, text[-2000:]  # the warm-up's use of the caches is on purpose

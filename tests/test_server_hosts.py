"""A server that only talks to its own page (issue 17, point 5): a WebSocket with a foreign Host header
(the DNS-rebinding shape, Origin matching the Host) is refused; the app's own names are accepted.  The server is
started by scripts/serve.py, whose warm-up (issue 15) must then report itself ready."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
import tomllib
from pathlib import Path

import pytest

from scripts.browser_kit import LAUNCHER, app_server, offline_env

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
    log_path = tmp_path / "server.log"
    # the README's launcher itself (Streamlit in its process, after its warm-up thread has started)
    with log_path.open("w") as log, app_server(offline_env(tmp_path / "s.sqlite"), LAUNCHER, log) as (url, _, _p):
        port = int(url.rsplit(":", 1)[1])
        results = {h: asyncio.run(_handshake(port, h)) for h in ("127.0.0.1", "localhost", "evil.example",
                                                                  "127.0.0.1.nip.io")}
        for _ in range(240):  # the warm-up (views/warmup.py) ends with one line: ready, or why it stopped
            if "warm-up:" in log_path.read_text():
                break
            time.sleep(0.5)
    assert results["127.0.0.1"] == "open" and results["localhost"] == "open", results
    assert results["evil.example"] != "open" and results["127.0.0.1.nip.io"] != "open", results
    text = log_path.read_text()
    assert "warm-up: ready in" in text and "Traceback" not in text, text[-2000:]
    assert "missing ScriptRunContext" not in text, text[-2000:]  # the warm-up's use of the caches is on purpose

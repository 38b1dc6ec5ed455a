"""Start the app with ``server.allowedHosts`` set from the bind address (issue 17, point 5).

Usage: python scripts/serve.py [--address ADDR] [--port PORT] [--no-warm-up] [extra streamlit options ...]

This is the README's way to start the app: Streamlit runs in this process, and ``views/warmup.py`` first starts
loading and running the default view in a background thread (imports, model, its first map), while the server
starts and the first browser loads the page (issue 15: the model loaded and warmed once per server).

Streamlit (1.67) accepts a WebSocket from any Host header unless ``server.allowedHosts`` is set, so a
page on a foreign name that resolves to this machine (DNS rebinding) could talk to the app.  The repo's
.streamlit/config.toml allows only the loopback names (the default bind is localhost); binding to a
network address with this launcher allows exactly the names this machine answers to there: the address
itself, or for 0.0.0.0 / :: the host name, its fully qualified name and this machine's addresses.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ["localhost", "127.0.0.1", "::1"]


def _own_addresses() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    try:  # the address of the default route's interface (no packet is sent by a UDP connect)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return {n.split("%")[0] for n in names if n}


def allowed_hosts(address: str) -> list[str]:
    """Host names a browser may use to reach a server bound to ``address`` (ports are ignored)."""
    if address in ("", "localhost", "127.0.0.1", "::1"):
        return list(LOOPBACK)
    if address in ("0.0.0.0", "::"):
        return LOOPBACK + sorted(_own_addresses() - set(LOOPBACK))
    return LOOPBACK + [address]


def command(address: str, port: int, extra: list[str]) -> list[str]:
    hosts = allowed_hosts(address)
    return [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", address,
            "--server.port", str(port), *[a for h in hosts for a in ("--server.allowedHosts", h)], *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--no-warm-up", action="store_true", help="do not prepare the default view at start")
    args, extra = parser.parse_known_args()
    cmd = command(args.address, args.port, extra)
    print("allowed hosts:", ", ".join(allowed_hosts(args.address)), file=sys.stderr)
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working folder
    if not args.no_warm_up:
        sys.path.insert(0, str(ROOT))
        from views import warmup

        warmup.pause_collector()  # until the warm-up's imports are done (Streamlit's own included)
    from streamlit.web import cli  # (before the warm-up: a thread importing torch meanwhile made both slower)

    if not args.no_warm_up:
        warmup.start()
    sys.argv = ["streamlit", *cmd[3:]]  # `python -m streamlit run app.py ...`, in this process
    sys.exit(cli.main())


if __name__ == "__main__":
    main()

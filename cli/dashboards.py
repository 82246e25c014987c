"""`ember dashboards`: the Evidently UI over the monitoring workspace (monitoring/dashboards.py), on localhost."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer


def _check_port_free(host: str, port: int) -> None:
    """A busy port or an unknown host is one line of bad input here, not a traceback from uvicorn later."""
    from core.errors import UserError

    if not 0 < port < 65536:
        raise UserError(f"--port: must be 1-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"--host: cannot resolve {host!r}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port whose last server just stopped (TIME_WAIT) still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"--port: cannot listen on {host}:{port}: {err.strerror}") from None


def dashboards(
    workspace: Path | None = typer.Option(
        None, "--workspace", help="Evidently workspace directory (default artifacts/evidently)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    seed_demo: bool = typer.Option(
        False, "--seed-demo", help="First fill the workspace with daily demo runs (tagged 'demo': made-up data)."
    ),
    days: int = typer.Option(14, "--days", help="How many daily demo runs per model with --seed-demo."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the UI (--no-serve: only seed)."),
) -> None:
    """Start the Evidently UI on the monitoring dashboards: one project per model, one snapshot per monitor run."""
    from core.errors import UserError
    from monitoring import dashboards as board

    path = workspace if workspace is not None else board.DEFAULT_WORKSPACE
    if not seed_demo and not path.is_dir():
        raise UserError(f"--workspace: {path}: no such directory (run the monitor flow, or use --seed-demo)")
    if serve:
        _check_port_free(host, port)
    if seed_demo:
        added = board.seed_demo(path, days=days)
        typer.echo(f"{path}: {added} demo runs added (tagged 'demo')")
    board.init_workspace(path)
    if not serve:
        return
    # Evidently's UI sends usage telemetry by default: this machine has no business calling out.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently.ui.service.app import get_config, run

    config = get_config(host=host, port=port, workspace=str(path))
    config.telemetry.enabled = False
    typer.echo(f"Evidently UI on http://{host}:{port} (workspace {path}); Ctrl-C stops it", err=True)
    run(config)

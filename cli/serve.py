"""`ember serve`: the recommendation HTTP service (serving/service.py) under `bentoml serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

REPO_ROOT = Path(__file__).resolve().parent.parent


def serve(
    port: int = typer.Option(3000, "--port", help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 inside a container)."),
    config: Path = typer.Option(
        REPO_ROOT / "serving" / "variants.yaml", "--config", help="Variants config (YAML): salt, variants, shadow."
    ),
) -> None:
    """Serve /recommend, /rank, probes, metrics and the admin API (token: EMBER_ADMIN_TOKEN).

    Relative paths in the config (stats, exposure log, model directories) are taken from the repository root, where
    the service runs, as for every other `ember` command.
    """
    from serving.ab import load_config
    from serving.service import CONFIG_ENV

    config = config.resolve()
    load_config(config)  # a bad config is one line here, not a traceback in a worker
    os.chdir(REPO_ROOT)
    env = dict(os.environ, **{CONFIG_ENV: str(config)})
    argv = [sys.executable, "-m", "bentoml", "serve", "serving.service:Ember"]
    argv += ["--host", host, "--port", str(port), "--working-dir", str(REPO_ROOT)]
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: bentoml becomes this process, so signals (Ctrl-C, a supervisor's SIGTERM) reach it directly.
    os.execve(sys.executable, argv, env)

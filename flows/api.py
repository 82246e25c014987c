"""The Prefect API that `ember run` runs its flow against.

Prefect's ephemeral API (what a flow uses when no PREFECT_API_URL is set) starts a temporary server that must be up
within 20 s; its first start on a fresh machine creates and migrates a new database and misses that limit on 2
cores. So `ember run` never uses it: with PREFECT_API_URL set (environment or Prefect profile) it health-checks that
API and runs against it as it is; without, it starts `prefect server start` on a free loopback port with its own
PREFECT_HOME, `.prefect/` in the repository (git-ignored; the database stays there between runs), waits on its
/api/health with a generous deadline (no race: an exited or silent server is one line naming its log), runs the flow
against it and stops the server's process group afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError
from serving.smoke import free_port, stop_group

HOME = Path(__file__).resolve().parents[1] / ".prefect"
START_TIMEOUT_S = 180.0  # the first start migrates a new SQLite database: ~20-40 s on 2 busy cores
CONFIGURED_TIMEOUT_S = 10.0  # an API the user runs is up already: a few tries, then the error
PREFECT = str(Path(sys.executable).parent / "prefect")


class ApiUnavailable(UserError):
    """The Prefect API did not answer its health check: the message names the URL and what to look at."""


def health_error(url: str, request_timeout_s: float = 5.0) -> str | None:
    """None when GET `url`/health answers with success through Prefect's own client (so an API key or auth string
    from the settings is sent), else the error on one line."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    timeout = {"timeout": request_timeout_s}
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True, httpx_settings=timeout) as c:
        error = c.api_healthcheck()
    return None if error is None else " ".join(f"{type(error).__name__}: {error}".split())


def wait_healthy(
    url: str, timeout_s: float, server: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> float:
    """Polls `url`/health until it answers; returns the seconds waited. Raises ApiUnavailable after `timeout_s`, or
    as soon as `server` (the process serving `url`, when we started it) has exited; the message names `log`."""
    start = time.monotonic()
    see = f" (log: {log})" if log is not None else ""
    while True:
        error = health_error(url, request_timeout_s=min(5.0, max(1.0, timeout_s)))
        waited = time.monotonic() - start
        if error is None:
            return waited
        if server is not None and server.poll() is not None:
            raise ApiUnavailable(f"prefect server start for {url} exited with status {server.returncode}{see}")
        if waited > timeout_s:
            if server is None:
                raise ApiUnavailable(
                    f"the Prefect API at PREFECT_API_URL={url} is unreachable after {timeout_s:.0f} s ({error}): "
                    "start that server, or unset PREFECT_API_URL and `ember run` starts its own"
                )
            raise ApiUnavailable(f"the Prefect API server at {url} was not healthy after {timeout_s:.0f} s{see}")
        time.sleep(0.5)


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any PREFECT_* setting (nothing of the caller's profile leaks in), with
    PREFECT_HOME `home`, analytics and the UI off, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env |= {"PREFECT_SERVER_UI_ENABLED": "false"}
    return env | dict(extra or {})


@contextmanager
def local_server(
    home: Path = HOME, extra_env: Mapping[str, str] | None = None, timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """`prefect server start` on a free loopback port with PREFECT_HOME `home` (created if missing: an empty home
    gets a new database, migrated on this start) and its output in `home`/server.log; yields the API URL once
    /api/health answers, then stops the server and everything it started. `extra_env`: more server settings (a
    database URL, an auth string)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env(home, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop_group stops uvicorn and the services with it
        )
        try:
            with _exit_on_sigterm():
                wait_healthy(url, timeout_s, server=server, log=log_path)
                yield url
        finally:
            stop_group(server)


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM (a supervisor, `kill`, a timeout) exits through Python's unwinding instead of
    killing the process on the spot, so `local_server` still stops the server it started (it runs in its own session
    and would outlive this process). Only where SIGTERM has its default action and on the main thread (the only one
    that may set a handler); the previous action is restored after."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _drain_workers() -> None:
    """Sends the logs and events still queued in this process before the server they go to stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    EventsWorker.drain_all(timeout=30, at_exit=False)


@contextmanager
def prefect_api(home: Path = HOME, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """The API a flow run in this block uses, health-checked before the block starts; yields its URL. With
    PREFECT_API_URL set, that one; else a `local_server(home)` for the block, set as PREFECT_API_URL inside it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        wait_healthy(configured, CONFIGURED_TIMEOUT_S)
        yield configured
        return
    with local_server(home, timeout_s=timeout_s) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield url
        finally:
            _drain_workers()

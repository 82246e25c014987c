"""The Prefect API of `ember run` (flows/api.py): a real `prefect server start` on an empty PREFECT_HOME,
health-checked, a flow run stored through it, the server stopped; a bad PREFECT_API_URL or a dead server is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.api import ApiUnavailable, health_error, local_server, prefect_api
from serving.smoke import free_port
from tests.conftest import CliResult


@flow(name="ember-api-probe")
def probe(x: int) -> int:
    return x + 1


@pytest.fixture
def no_configured_api() -> Iterator[None]:
    """No PREFECT_API_URL, whatever the environment or profile running the tests says."""
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert PREFECT_API_URL.value() is None
        yield


@pytest.mark.slow
def test_an_empty_home_gets_a_healthy_local_server_that_runs_the_flow(tmp_path: Path, no_configured_api: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    home = tmp_path / "prefect-home"
    assert not home.exists()
    started = time.monotonic()
    with prefect_api(home=home) as url:
        ready_s = time.monotonic() - started
        print(f"Prefect server on an empty home healthy in {ready_s:.1f} s")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert PREFECT_API_URL.value() == url  # the flow below goes to this server, not an ephemeral one
        assert health_error(url) is None
        assert (home / "prefect.db").is_file()  # the new database, in the given home
        assert probe(41) == 42
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ember-api-probe"])))
        assert [run.state.type.value for run in runs if run.state] == ["COMPLETED"]
    assert PREFECT_API_URL.value() is None  # restored
    assert health_error(url, request_timeout_s=2) is not None, "the server must be stopped after the block"


def test_an_unreachable_prefect_api_url_is_one_line_and_runs_nothing(
    run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(**_: object) -> None:
        raise AssertionError("the flow must not start without a healthy API")

    monkeypatch.setattr("flows.pipeline.ember_pipeline", never)
    monkeypatch.setattr("flows.api.CONFIGURED_TIMEOUT_S", 1.0)
    bad = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: bad}):
        line = run_cli("run").error_line()
    assert line.startswith(f"error: the Prefect API at PREFECT_API_URL={bad} is unreachable after 1 s")
    assert "unset PREFECT_API_URL" in line


def test_a_server_that_exits_is_one_line_naming_its_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad_setting = {"PREFECT_SERVER_LOGGING_LEVEL": "NOT-A-LEVEL"}
    with pytest.raises(ApiUnavailable) as failed, local_server(home, extra_env=bad_setting):
        pytest.fail("an invalid server setting must not give a healthy server")
    message = str(failed.value)
    assert "\n" not in message and "exited with status 1" in message
    assert message.endswith(f"(log: {home / 'server.log'})")
    assert "NOT-A-LEVEL" in (home / "server.log").read_text()  # the log says why


def test_a_server_not_healthy_by_the_deadline_is_one_line_naming_its_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    late = r"was not healthy after 0 s \(log: .*server\.log\)$"
    with pytest.raises(ApiUnavailable, match=late), local_server(home, timeout_s=0):
        pytest.fail("no server answers its health check at once")


@pytest.mark.slow
def test_sigterm_to_the_process_stops_its_local_server(tmp_path: Path) -> None:
    """A process killed with SIGTERM inside `local_server` (a stopped `ember simulate`, a supervisor's timeout)
    still stops the server it started: the server runs in its own session and would otherwise be left running."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from flows.api import local_server\n"
        "with local_server(Path(sys.argv[1])) as url:\n"
        "    print(url, flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "home")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert health_error(url) is None
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while health_error(url, request_timeout_s=2) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert health_error(url, request_timeout_s=2) is not None, "the server outlived the killed process"
    finally:
        if child.poll() is None:
            child.kill()

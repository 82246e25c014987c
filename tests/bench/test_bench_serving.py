"""The serving benchmark's bookkeeping, against fakes (the real run is `python -m bench.serving`, by hand): a degraded
200 is counted and fails the target, the server's exposure log goes to a temporary directory and never to the
repository's logs/, and every row names the presets it served."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bench import load, serving


class _Handler(BaseHTTPRequestHandler):
    """POST /recommend: user % 5 == 0 -> 503, user % 5 == 1 -> a degraded 200, else a full 200."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmark's client uses it

    def do_POST(self) -> None:
        user = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["user_id"]
        status, body = (503, b"{}") if user % 5 == 0 else (200, json.dumps({"degraded": user % 5 == 1}).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_degraded_answers_and_errors_are_counted(fake_port: int, concurrency: int) -> None:
    got = serving._load(fake_port, list(range(1, 51)), concurrency)
    assert len(got.latencies) == 50 and got.errors == 10 and got.degraded == 10


def test_a_degraded_answer_fails_the_target_even_when_fast() -> None:
    fast = [5.0] * 100
    clean = serving.http_row(1, serving.Answers(fast, 1.0, 0, 0), "s")
    assert clean.verdict.startswith("met:") and "0 degraded, 0 errors of 100" in clean.verdict
    one_degraded = serving.http_row(1, serving.Answers(fast, 1.0, 0, 1), "s")
    assert one_degraded.verdict.startswith("missed:") and "1 degraded" in one_degraded.verdict
    assert "1 degraded" in one_degraded.throughput and one_degraded.extra["degraded"] == 1


def _model(directory: Path, preset: str | None, d_model: int, n_layers: int) -> Path:
    (directory / "best").mkdir(parents=True)
    (directory / "best" / "config.json").write_text(json.dumps({"d_model": d_model, "n_layers": n_layers}))
    if preset:
        (directory / "metrics.json").write_text(json.dumps({"preset": preset}))
    return directory / "best"


def test_rows_name_the_served_presets(tmp_path: Path) -> None:
    cfg = SimpleNamespace(
        ranker=_model(tmp_path / "ranker", "nano", 32, 1), retrieval_model=_model(tmp_path / "retr", None, 64, 2)
    )
    got = serving.served_models(cfg)
    assert got.startswith("ranker preset nano (D32, 1 layers)")
    assert "two-tower preset unrecorded (D64, 2 layers)" in got


def _fake_server_process(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """bench.load.start_server with its config rewrite for real and a fake process: returns the argv it started."""
    argv: list[str] = []

    def popen(args: list[str], **_: Any) -> SimpleNamespace:
        argv.extend(args)
        return SimpleNamespace()

    monkeypatch.setattr(load.subprocess, "Popen", popen)
    monkeypatch.setattr(load, "wait_ready", lambda url, proc, timeout: 1.0)
    return argv


def test_the_server_logs_exposures_into_a_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _fake_server_process(monkeypatch)
    cfg = SimpleNamespace(ranker=_model(tmp_path / "r", "small", 64, 2), retrieval_model=tmp_path / "t")
    monkeypatch.setattr(serving, "champion_config", lambda: cfg)
    monkeypatch.setattr(serving, "stop_group", lambda proc: None)
    monkeypatch.setattr(
        serving, "_load", lambda port, users, c, keep_alive=True: serving.Answers([5.0] * len(users), 1.0, 0, 0)
    )
    rows = serving.over_http(10)
    workdir = Path(argv[argv.index("--config") + 1]).parent
    assert workdir.name.startswith("bench-serving-") and not workdir.exists()  # removed afterwards
    assert serving.REPO not in workdir.parents
    # c=1 with keep-alive and with a new connection per request (as an outside client without pooling), then c=16.
    assert [(r.extra["concurrency"], r.extra["keep_alive"]) for r in rows] == [(1, True), (1, False), (16, True)]
    assert "a new connection each" in rows[1].name and "a new connection per request" in rows[1].settings
    for r in rows:
        assert "exposure log in a temporary directory" in r.settings
        assert "ranker preset small (D64, 2 layers)" in r.settings


def test_start_server_moves_the_exposure_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _fake_server_process(monkeypatch)
    load.start_server(serving.CONFIG, tmp_path)
    moved = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
    assert Path(moved["exposure"]["path"]) == tmp_path / "exposure.jsonl"
    assert yaml.safe_load(serving.CONFIG.read_text())["exposure"]["path"] == "logs/exposure.jsonl"  # untouched

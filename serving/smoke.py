"""`python -m serving.smoke`: start `ember serve`, wait until it is ready, send one /recommend request over HTTP,
print the response, stop the server. The last step of `make run`; exits non-zero if any step fails."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; the IANA range elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 49152, 65535


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, chosen below the ephemeral range: a port the kernel hands out for
    port 0 can be taken by any outgoing connection (a Redis or Postgres client) in the seconds between this check and
    the server's own bind, which happened in CI ("Address already in use"); ports below the range are never given
    to outgoing connections."""
    low, _ = _ephemeral_range()
    rng = random.Random()  # unseeded: parallel callers must not walk the same sequence
    for _ in range(200):
        port = rng.randrange(20000, max(low, 20001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Stops a process started with start_new_session=True and everything it spawned (BentoML's workers, a Prefect
    server's uvicorn): SIGTERM to its process group, SIGKILL after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"ember serve exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"ember serve was not ready after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "serving" / "variants.yaml"))
    parser.add_argument("--user", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=180.0)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ember = str(Path(sys.executable).parent / "ember")
    proc = subprocess.Popen([ember, "serve", "--port", str(port), "--config", args.config], start_new_session=True)
    try:
        ready_s = wait_ready(base, proc, args.timeout_s)
        body = json.dumps({"user_id": args.user, "k": args.k}).encode()
        request = urllib.request.Request(
            f"{base}/recommend", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
        took_ms = (time.perf_counter() - start) * 1000
        items = answer["items"]
        print(f"ember serve ready in {ready_s:.1f} s; POST /recommend user {args.user} k {args.k}: {took_ms:.0f} ms")
        print(f"variant {answer['variant']}, degraded {answer['degraded']}, {len(items)} items:")
        for i, item in enumerate(items):
            probs = {a: p for a, p in item.get("actions", {}).items() if a != "dwell_time"}  # dwell_time: seconds
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{a} {p:.3f}" for a, p in top)
            where = f"post {item['post_id']} by {item['author_id']} ({item['source']})"
            print(f"  {i + 1:2d}. {where} score {item['score']:.4f} {shown}")
        if not items:
            raise SystemExit("POST /recommend returned an empty slate")
    finally:
        stop_group(proc)


if __name__ == "__main__":
    main()

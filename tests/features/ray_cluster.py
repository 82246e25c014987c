"""A real local Ray cluster for tests: `ray start --head` on 127.0.0.1 with 2 CPUs, a free port and a temporary
directory of its own, stopped by killing only what it started.

Never `ray stop`: it kills every Ray process of the machine by name, other people's drivers and workers included
(on a shared machine it took another engineer's pytest run down with it). The head runs `--block` in a session of its
own, so its process group is everything it started; anything still alive after that group is killed is found by the
temporary directory in its command line (unique to this cluster) and killed by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth_env() -> dict[str, str]:
    """The environment for the head, `ray status` and the test's drivers: token authentication off unless the caller
    chose. Without RAY_AUTH_MODE, Ray 2.60 turns token auth on for `ray start` whenever ~/.ray/auth_token exists (any
    local `ray.init()` writes one), and `ray status` then cannot reach the head."""
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}


@dataclass
class RayCluster:
    """A running head node: its address (for RAY_ADDRESS), its temporary directory and the `ray start` process."""

    address: str
    temp_dir: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, num_cpus: int = 2, timeout: float = 120.0) -> RayCluster:
        """Starts the head and waits until `ray status` answers on its address."""
        port = free_port()
        # Short and under /tmp: Ray's unix sockets live below it (a socket path is at most 107 bytes).
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        argv = [
            str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir), "--include-dashboard", "false",
            "--disable-usage-stats",
        ]  # fmt: skip
        log = (temp_dir / "head.log").open("wb")
        env = auth_env()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()
        cluster = cls(f"127.0.0.1:{port}", temp_dir, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                cluster.stop()
                raise RuntimeError(f"ray start exited with {process.returncode}: {cluster.log_tail()}")
            status = [str(RAY), "status", "--address", cluster.address]
            if subprocess.run(status, capture_output=True, timeout=60, env=env).returncode == 0:
                return cluster
            time.sleep(1.0)
        cluster.stop()
        raise RuntimeError(f"the Ray head did not come up in {timeout:.0f} s")

    def log_tail(self) -> str:
        path = self.temp_dir / "head.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """Ends the head's process group, then any process still naming this cluster's directory; removes it."""
        import psutil

        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        mine = str(self.temp_dir)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if mine in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        shutil.rmtree(self.temp_dir, ignore_errors=True)

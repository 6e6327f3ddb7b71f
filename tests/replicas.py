"""Replicas of the service (`infusion-adapter serve`, each a process of its own on a loopback
port) behind a round-robin proxy: started, killed with SIGKILL, started again on the same port.
Tests and benchmarks share it."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.round_robin import RoundRobinProxy

CLI = [sys.executable, "-m", "adapter.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def replica_environment(
    database_url: str, mappings_dir: Path, ehr_base: str, **settings: str
) -> dict[str, str]:
    """The environment every replica shares: the store, the mappings, the EHR, the proxy as
    the trusted one; `settings` adds or replaces ADAPTER_ variables (`sync_lease_seconds="3"`)."""
    env = {
        **os.environ,
        "ADAPTER_DATABASE_URL": database_url,
        "ADAPTER_MAPPINGS_DIR": str(mappings_dir),
        "ADAPTER_EHR_BASE_URL": ehr_base,
        "ADAPTER_TRUSTED_PROXIES": "127.0.0.1",
        "ADAPTER_LOG_LEVEL": "WARNING",
    }
    env.update({f"ADAPTER_{name.upper()}": value for name, value in settings.items()})
    return env


HEALTH_CHECKS = httpx.Client(timeout=1, trust_env=False, verify=False)
"""One client for every health check: plain HTTP on loopback. (A client made for each try
loads the system's CA store each time, which costs more than the request.)"""


def healthy(process: subprocess.Popen[bytes], port: int, seconds: float = 60) -> bool:
    """Whether the service started as `process` answers its health check on `port` within
    `seconds` (False at once if it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if HEALTH_CHECKS.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.1)
    return False


class Replicas:
    """`count` replicas sharing `env`, and the proxy in front of them (`url`)."""

    def __init__(self, count: int, env: dict[str, str], cwd: Path) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.proxy = RoundRobinProxy(self.ports, forwarded_for=True)
        self.url = self.proxy.url
        self.env = {**env, "ADAPTER_PUBLIC_URL": self.url}
        self.cwd = cwd
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self.processes = [self._start(port) for port in self.ports]
            for index in range(count):
                self._wait_healthy(index)
        except BaseException:
            self.stop()
            raise

    def _start(self, port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*CLI, "serve", "--port", str(port)],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
        )

    def _wait_healthy(self, index: int) -> None:
        if not healthy(self.processes[index], self.ports[index]):
            raise RuntimeError(f"replica {index} did not start")

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def kill(self, index: int) -> None:
        """SIGKILL: no shutdown, its claims and lease left to run out."""
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(timeout=30)

    def restart(self, index: int) -> None:
        self.processes[index] = self._start(self.ports[index])
        self._wait_healthy(index)

    def stop(self) -> None:
        """SIGTERM to each, as an orchestrator stops them; killed after a minute."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.proxy.stop()

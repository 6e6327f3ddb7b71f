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

from tests.round_robin import RoundRobinProxy, Upstream

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


def listens(pid: int, port: int) -> bool:
    """Whether the process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc).
    A port found free may be taken by another process before the service binds it; that
    process's answer to a health check is not the service's."""
    address = f"0100007F:{port:04X}"
    inodes = {
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[1] == address and fields[3] == "0A"  # LISTEN
    }
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to read
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in wanted:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def healthy(process: subprocess.Popen[bytes], port: int, seconds: float = 60) -> bool:
    """Whether the service started as `process` answers its health check on `port` within
    `seconds`, itself and not another process on that port (False at once if it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answered = HEALTH_CHECKS.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        except httpx.TransportError:
            answered = False
        if answered and listens(process.pid, port):
            return True
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
                self._wait_started(index)
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

    def _wait_started(self, index: int) -> None:
        """The replica answering on its port; one whose port another process took between
        `free_port` and its bind is started again on another (three tries)."""
        for _ in range(3):
            if healthy(self.processes[index], self.ports[index]):
                return
            if self.processes[index].poll() is None:
                break  # running, yet not answering
            self.ports[index] = free_port()
            self.proxy.upstreams[index] = Upstream(self.ports[index])
            self.processes[index] = self._start(self.ports[index])
        raise RuntimeError(f"replica {index} did not start")

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

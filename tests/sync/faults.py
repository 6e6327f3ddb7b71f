"""A fault-injecting HTTP proxy between the sync and the sandbox EHR: a configurable share of
500, 503 and 429 answers, timeouts, and connections reset before or after the request reached
the server (the case where the EHR stored what the sync never heard back about)."""

import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import requests

TRANSIENT = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'


@dataclass
class Faults:
    """Shares of requests (0..1) that meet each fault; the rest pass through."""

    error_500: float = 0.0
    error_503: float = 0.0
    throttle_429: float = 0.0
    retry_after: int = 2
    timeout: float = 0.0
    timeout_seconds: float = 1.0
    reset_before: float = 0.0
    reset_after: float = 0.0
    seed: int = 7
    spared: tuple[str, ...] = ()
    """Paths that meet no fault (`/fhir/metadata`: an EHR whose front answers while the rest
    of it fails)."""
    methods: tuple[str, ...] = ()
    """The methods whose requests meet faults (none named: every method)."""
    alternate: bool = False
    """Every other request that may meet a fault meets the first fault given a share, the
    first passing; nothing is drawn."""
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def failing(cls, share: float, timeouts: float, timeout_seconds: float) -> "Faults":
        """`share` of requests fail: `timeouts` of them by a timeout (each costs the client its
        whole timeout, so it is kept small), the rest spread evenly over the other faults."""
        part = (share - timeouts) / 5
        return cls(
            error_500=part,
            error_503=part,
            throttle_429=part,
            timeout=timeouts,
            timeout_seconds=timeout_seconds,
            reset_before=part,
            reset_after=part,
        )


class FaultProxy:
    def __init__(self, upstream_origin: str, faults: Faults) -> None:
        self.upstream = upstream_origin
        self.faults = faults
        self.random = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.enabled = True
        self.drawn = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                return None

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.session = requests.Session()

    def _draw(self) -> str:
        f = self.faults
        with self.lock:
            roll = self.random.random()
            self.drawn += 1
            passing = self.drawn % 2 == 1
        for name, share in (
            ("500", f.error_500),
            ("503", f.error_503),
            ("429", f.throttle_429),
            ("timeout", f.timeout),
            ("reset_before", f.reset_before),
            ("reset_after", f.reset_after),
        ):
            if f.alternate and share:
                return "pass" if passing else name
            if roll < share:
                return name
            roll -= share
        return "pass"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if handler.path == "/_faults":
            self._reply(
                handler, 200, {"Content-Type": "application/json"}, orjson.dumps(self.faults.counts)
            )
            return
        faulty = (
            handler.path.startswith("/fhir")
            and handler.path not in self.faults.spared
            and handler.command in (self.faults.methods or (handler.command,))
        )
        fault = self._draw() if self.enabled and faulty else "pass"
        with self.lock:
            self.faults.counts[fault] = self.faults.counts.get(fault, 0) + 1
        if fault in ("500", "503", "429"):
            payload = TRANSIENT
            handler.send_response(int(fault))
            handler.send_header("Content-Type", "application/fhir+json")
            handler.send_header("Content-Length", str(len(payload)))
            if fault == "429":
                handler.send_header("Retry-After", str(self.faults.retry_after))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if fault == "reset_before":
            self._reset(handler)
            return
        if fault == "timeout":
            time.sleep(self.faults.timeout_seconds)
            self._reset(handler)
            return
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")
        }
        answer = self.session.request(
            handler.command, self.upstream + handler.path, data=body, headers=headers
        )
        if fault == "reset_after":
            self._reset(handler)
            return
        hop_by_hop = ("content-length", "transfer-encoding", "connection", "keep-alive")
        passed = {k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop}
        self._reply(handler, answer.status_code, passed, answer.content)

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        connection: socket.socket = handler.connection
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ProxyProcess:
    """The proxy in a process of its own, so that it does not share the test's interpreter
    (and its lock) with the sync it is testing."""

    def __init__(self, upstream_origin: str, faults: Faults) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sync.faults", upstream_origin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(orjson.dumps(asdict(faults)).decode() + "\n")
        self.process.stdin.flush()
        self.origin = self.process.stdout.readline().strip()

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = requests.get(f"{self.origin}/_faults", timeout=10).json()
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    proxy = FaultProxy(sys.argv[1], Faults(**orjson.loads(sys.stdin.readline())))
    print(proxy.origin, flush=True)
    proxy.thread.join()

"""A round-robin reverse proxy on loopback, as a load balancer in front of several replicas of
the service: each request goes to the next upstream in turn, and one that refuses connections
(a replica that died) is passed over. Tests and benchmarks share it."""

import http.client
import itertools
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
IDLE_SECONDS = 2.0
"""An upstream connection idle longer than this is not reused: the service closes idle
connections after 5 s (uvicorn's keep-alive), and a request sent on one it is closing fails."""
RETRIED = {"GET", "HEAD"}
"""Methods sent again to the next upstream when one fails mid-request; a POST is answered 502
instead (a load balancer does not resend a request the upstream may have carried out)."""


class Upstream:
    """A replica's port, and how many requests it answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered = 0
        self.refused = 0


class RoundRobinProxy:
    """Listens on a loopback port of its own (`url`) until `stop`. With `forwarded_for`, adds
    the caller's address to `X-Forwarded-For`, for a service told to trust this proxy
    (ADAPTER_TRUSTED_PROXIES)."""

    def __init__(self, ports: list[int], forwarded_for: bool = False, timeout: float = 120) -> None:
        self.upstreams = [Upstream(port) for port in ports]
        self.forwarded_for = forwarded_for
        self.timeout = timeout
        self.failed: Counter[str] = Counter()
        """Requests answered 502, by why."""
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answered(self) -> list[int]:
        return [upstream.answered for upstream in self.upstreams]

    def _order(self) -> list[Upstream]:
        with self._lock:
            first = next(self._turn) % len(self.upstreams)
        return self.upstreams[first:] + self.upstreams[:first]

    def _connection(self, upstream: Upstream) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection of this thread to the upstream, and whether it is reused."""
        pool: dict[int, tuple[http.client.HTTPConnection, float]] = self._local.__dict__.setdefault(
            "pool", {}
        )
        kept = pool.pop(upstream.port, None)
        if kept is not None:
            connection, rested = kept
            if time.monotonic() - rested < IDLE_SECONDS:
                return connection, True
            connection.close()
        return http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=self.timeout), False

    def _keep(self, upstream: Upstream, connection: http.client.HTTPConnection) -> None:
        self._local.__dict__.setdefault("pool", {})[upstream.port] = (connection, time.monotonic())

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The first answer of the upstreams in turn: status, headers, body."""
        for upstream in self._order():
            for _ in range(2):  # a reused connection the upstream closed meanwhile: a new one
                connection, reused = self._connection(upstream)
                try:
                    connection.request(method, path, body=body, headers=dict(headers))
                except ConnectionRefusedError:
                    connection.close()
                    with self._lock:
                        upstream.refused += 1
                    break  # the next upstream
                except OSError:
                    connection.close()
                    if reused:
                        continue
                    break
                try:
                    response = connection.getresponse()
                    content = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    if method in RETRIED:
                        continue  # a new connection, then the next upstream
                    with self._lock:
                        self.failed[type(exc).__name__] += 1
                    return 502, [], b"the upstream failed mid-request"
                answer = [
                    (name, value)
                    for name, value in response.getheaders()
                    if name.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}
                ]
                if response.will_close:
                    connection.close()
                else:
                    self._keep(upstream, connection)
                with self._lock:
                    upstream.answered += 1
                return response.status, answer, content
        self.failed["no upstream"] += 1
        return 502, [], b"no upstream answered"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [
                    (name, value)
                    for name, value in self.headers.items()
                    if name.lower() not in HOP_BY_HOP | {"content-length", "x-forwarded-for"}
                ]
                if proxy.forwarded_for:
                    chain = [self.headers.get("X-Forwarded-For"), self.client_address[0]]
                    headers.append(("X-Forwarded-For", ", ".join(a for a in chain if a)))
                if body or self.command in ("POST", "PUT", "PATCH"):
                    headers.append(("Content-Length", str(len(body))))
                status, answer, content = proxy.forward(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in answer:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay

        return Handler

"""The tests' round-robin proxy: requests in turn across the upstreams, a dead one passed over,
X-Forwarded-For only when asked for, and a POST cut off mid-request answered 502, not resent."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2 as httpx
import pytest

from tests.replicas import free_port, healthy
from tests.round_robin import RoundRobinProxy


class Upstream:
    """A loopback HTTP server answering with its name and the X-Forwarded-For it got; a POST
    to /die closes the connection without an answer."""

    def __init__(self, name: str) -> None:
        self.posts = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                body = f"{name} {self.headers.get('X-Forwarded-For')}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                upstream.posts += 1
                if self.path == "/die":
                    self.close_connection = True
                    return
                self._answer()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    started = [Upstream(name) for name in ("a", "b")]
    yield started
    for upstream in started:
        upstream.stop()


def test_requests_go_to_each_upstream_in_turn_and_a_dead_one_is_passed_over(
    upstreams: list[Upstream],
) -> None:
    dead = free_port()
    proxy = RoundRobinProxy([upstreams[0].port, dead, upstreams[1].port])
    try:
        names = [httpx.get(f"{proxy.url}/x").text.split()[0] for _ in range(6)]
    finally:
        proxy.stop()

    # The dead upstream's turns go to the one after it.
    assert names == ["a", "b", "b", "a", "b", "b"]
    assert proxy.answered() == [2, 0, 4]
    assert proxy.upstreams[1].refused == 2


def test_x_forwarded_for_is_added_only_when_asked_for(upstreams: list[Upstream]) -> None:
    for forwarded, expected in ((False, "None"), (True, "10.0.0.9, 127.0.0.1")):
        proxy = RoundRobinProxy([upstreams[0].port], forwarded_for=forwarded)
        try:
            answer = httpx.get(f"{proxy.url}/x", headers={"X-Forwarded-For": "10.0.0.9"})
        finally:
            proxy.stop()
        assert answer.text == f"a {expected}"


def test_a_post_the_upstream_drops_is_answered_502_and_not_sent_again(
    upstreams: list[Upstream],
) -> None:
    proxy = RoundRobinProxy([upstreams[0].port, upstreams[1].port])
    try:
        answer = httpx.post(f"{proxy.url}/die", content=b"{}")
    finally:
        proxy.stop()

    assert answer.status_code == 502
    assert upstreams[0].posts + upstreams[1].posts == 1


SERVES_HEALTH = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_a_health_check_counts_only_the_process_that_listens_on_the_port() -> None:
    """A port found free may be taken by another process before the service binds it: that
    process's answer does not make the service healthy."""
    squatter = Upstream("another process")
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    port = free_port()
    serving = subprocess.Popen([sys.executable, "-c", SERVES_HEALTH, str(port)])
    try:
        assert not healthy(waiting, squatter.port, seconds=1)
        assert healthy(serving, port, seconds=20)
    finally:
        squatter.stop()
        for process in (waiting, serving):
            process.kill()
            process.wait()

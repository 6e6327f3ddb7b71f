"""A gate on loopback in front of an EHR, passing TCP through as it is told: `open` (the EHR
is up), `refuse` (nothing listens on the gate's port: the EHR is stopped) or `hang`
(connections are taken and never answered: an EHR stuck, whose requests time out). Each
change drops the connections open through it, as the EHR stopping or starting would."""

import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["open", "refuse", "hang"]


class EhrGate:
    """Listens on a loopback port of its own; `base` is the EHR's base URL through it."""

    def __init__(self, upstream_base: str) -> None:
        origin, _, path = upstream_base.removeprefix("http://").partition("/")
        self.upstream = ("127.0.0.1", int(origin.rsplit(":", 1)[1]))
        self.mode: Mode = "open"
        self.accepted = 0
        """Connections taken so far (in `hang`: requests that will get no answer)."""
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/{path}"

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the gate refuses now, or stopped
            with self._lock:
                self._connections.add(client)
                self.accepted += 1
                hanging = self.mode == "hang"
            if not hanging:
                threading.Thread(target=self._pass, args=(client,), daemon=True).start()

    def _pass(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._connections.add(upstream)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def set(self, mode: Mode) -> None:
        with self._lock:
            before, self.mode = self.mode, mode
            dropped, self._connections = self._connections, set()
        for connection in dropped:
            _close(connection)
        if mode == "refuse" and before != "refuse":
            _close(self._listener)
        elif before == "refuse" and mode != "refuse":
            self._listener = self._listen(self.port)

    def stop(self) -> None:
        self.set("refuse")


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(target)


def _close(connection: socket.socket) -> None:
    """Shut down first: a thread blocked reading or accepting on it wakes up."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()

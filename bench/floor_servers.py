"""The reference servers of ``bench/floor.py``: what a CPython agent costs at the least.

    python -m bench.floor_servers KIND SOCKET      (KIND: "epoll echo", "asyncio echo", "epoll parse")

Standard library only, so any interpreter runs it.  Each serves one request per read (the
benchmark's client sends one request and waits for its reply), until killed.
"""

from __future__ import annotations

import json
import select
import socket
import sys

FIXED_REPLY = b'{"return": {}, "id": 1}\n'



def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    sock.setblocking(False)
    return sock


def serve_epoll(path: str, answer: bool) -> None:
    """One request per read (the client sends one and waits), as the measurement does."""
    listener = _listen(path)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    clients: dict[int, socket.socket] = {}
    encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, False)
    handlers = {"guest-ping": lambda: {}, "guest-sync": lambda id: id,
                "guest-fsfreeze-status": lambda: "thawed"}
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                client, _ = listener.accept()
                client.setblocking(False)
                clients[client.fileno()] = client
                poller.register(client.fileno(), select.EPOLLIN)
                continue
            client = clients[fd]
            data = client.recv(16384)
            if not data:
                poller.unregister(fd)
                clients.pop(fd).close()
            elif not answer:
                client.send(FIXED_REPLY)
            else:
                request = json.loads(data)
                result = handlers[request["execute"]](**request.get("arguments", {}))
                client.send("".join(encoder({"return": result, "id": request["id"]}, 0)).encode() + b"\n")


def serve_asyncio(path: str) -> None:
    import asyncio

    class Echo(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(16384)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            self.transport.write(FIXED_REPLY)  # type: ignore[attr-defined]

    async def main() -> None:
        await asyncio.get_running_loop().create_unix_server(Echo, sock=_listen(path))
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> int:
    kind, path = sys.argv[1:3]
    if kind == "asyncio echo":
        serve_asyncio(path)
    elif kind in ("epoll echo", "epoll parse"):
        serve_epoll(path, answer=kind == "epoll parse")
    else:
        sys.exit(f"unknown kind {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

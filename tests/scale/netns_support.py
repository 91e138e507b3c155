"""A second host for the tests: a network namespace on a private link, and forwarders
that make this host's loopback-only services (PostgreSQL, Redis) reachable over it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Link:
    namespace: str
    host_ip: str
    """This host's end of the link."""
    peer_ip: str
    """The namespace's end."""

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def network_id(self) -> str:
        """What ``/proc/self/ns/net`` reads inside the namespace (``net:[inode]``)."""
        out = subprocess.run(
            self.exec_argv("readlink", "/proc/self/ns/net"), check=True, capture_output=True
        )
        return out.stdout.decode().strip()

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace: the host is lost, all at once."""
        for pid in _ip("netns", "pids", self.namespace).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def second_host() -> Iterator[Link]:
    """A namespace joined to this host by a veth pair on a /30 of 10.231.0.0/16."""
    tag = uuid.uuid4().hex[:6]
    namespace, near, far = f"omw-{tag}", f"omh{tag}", f"omn{tag}"
    base = random.randrange(0, 16384) * 4
    host_ip = f"10.231.{base // 256}.{base % 256 + 1}"
    peer_ip = f"10.231.{base // 256}.{base % 256 + 2}"
    _ip("netns", "add", namespace)
    link = Link(namespace, host_ip, peer_ip)
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", namespace)
        _ip("addr", "add", f"{host_ip}/30", "dev", near)
        _ip("link", "set", near, "up")
        _ip("-n", namespace, "addr", "add", f"{peer_ip}/30", "dev", far)
        _ip("-n", namespace, "link", "set", far, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield link
    finally:
        link.kill_all()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", near)
        _ip("netns", "del", namespace)


class Forwarder:
    """Listens on ``host``:<free port> and relays each connection to 127.0.0.1:``target``."""

    def __init__(self, host: str, target: int) -> None:
        self.host = host
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fwd-{target}")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the forwarder to port {target} did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, self.host, 0, reuse_address=True)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

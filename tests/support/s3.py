"""A real S3 API server, moto in server mode (PyPI ``moto[server]``), on a free loopback port,
stopped by its PID; and a TCP proxy in front of it that a test closes to make an outage.

moto keeps its buckets in memory: a restart would lose them. An outage is therefore the proxy
refusing connections (its listening socket closed, open connections reset) while moto keeps
running, so what was uploaded before the outage is still there to be listed after it.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import free_port, stop_server

KEY_ID = "testing"
SECRET = "testing"


class MotoServer:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.log = folder / "moto.log"
        with open(self.log, "wb") as out:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "MOTO_ALLOW_NONEXISTENT_REGION": "1"})  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("moto did not listen within 30 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``: key -> its bytes, decompressed (by the key's suffix or its Content-Encoding)."""
        c = self.client()
        out: dict[str, bytes] = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                got = c.get_object(Bucket=bucket, Key=item["Key"])
                out[item["Key"]] = decompress(got["Body"].read(), got.get("ContentEncoding", ""))
        return out

    def lines(self, bucket: str) -> list[bytes]:
        return [line for data in self.objects(bucket).values() for line in data.splitlines()]


def decompress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class Proxy:
    """A TCP proxy on a free port to ``port``, run on a thread of its own; ``down()`` closes its
    listening socket and resets every connection (clients get 'connection refused'), ``up()`` listens again."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.conns.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.conns.difference_update((writer, up_writer))

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()

    def up(self) -> None:
        self._run(self._listen())

    def down(self) -> None:
        self._run(self._close())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

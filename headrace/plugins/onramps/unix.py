"""``type: unix``: a byte stream per connection on a unix stream socket, as a server (default) or a client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import stat

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.paths import SettingError, check_file_path
from headrace.plugins.sockets import Handler, Meta, StreamOnramp, StreamOnrampConfig

log = logging.getLogger("headrace.plugins.unix")

MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class UnixOnrampConfig(StreamOnrampConfig):
    path: str = Field(description="socket path, relative to the config file's folder")


class UnixOnramp(StreamOnramp):
    name = "unix"
    Config = UnixOnrampConfig
    summary = "read unix stream socket connections (server replaces a stale socket file; or client); meta unix_path"
    example = "{type: unix, codec: json, config: {path: run/in.sock}}"

    def __init__(self, config: UnixOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.path = context.resolve(config.path)
        self.created = False

    def check(self) -> None:
        if len(str(self.path).encode()) > MAX_PATH:
            raise ValueError(f"socket path {self.path} is longer than {MAX_PATH} bytes")
        check_file_path("path", self.path)
        if self.cfg.mode == "server" and self.path.exists() and not self.path.is_socket():
            raise SettingError("path", f"{self.path} exists and is not a socket (the server replaces only a stale socket)")

    def where(self) -> str:
        return str(self.path)

    async def _remove_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket; not replacing it")
        try:
            _, writer = await asyncio.open_unix_connection(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("%s: removing stale socket %s", self.context.component_id, self.path)
            self.path.unlink(missing_ok=True)
            return
        writer.close()
        raise OSError(f"another process is listening on {self.path}")

    async def listen(self, handler: Handler) -> asyncio.AbstractServer:
        await self._remove_stale()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.start_unix_server(handler, path=str(self.path))
        self.created = True
        return server

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.path))

    def peer_meta(self, writer: asyncio.StreamWriter) -> Meta:
        return {"unix_path": str(self.path)}

    async def stop(self) -> None:
        await super().stop()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.created = False

"""What the onramp and offramp contract suites share: the checks of a plugin's declarations,
and a watch on what ``check()`` touches.

``check()`` runs while a config is validated (``headrace check``, a reload): it must not open
files, sockets or connections, nor start processes, because the thing it would touch may
not exist yet where the config is checked. ``touches_nothing`` watches it with an audit
hook (``sys.addaudithook``), in the calling thread only; reading the files of modules it
imports is allowed.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from headrace import registry
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.testing.contract import _rejects_unknown_keys

COMPONENT_ID = "contract"
# audit events that reach outside the process (a file written or removed, a socket, a process)
TOUCHING = frozenset({
    "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg",
    "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.startfile",
    "os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.truncate", "os.symlink", "os.link", "os.chmod", "os.chown",
    "shutil.rmtree", "shutil.copyfile", "shutil.move",
})  # fmt: skip
MODULE_FILES = (*importlib.machinery.all_suffixes(), ".pyc")

_touched: dict[int, list[str]] = {}  # thread id -> what it touched while watched
_hooked = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _touched:  # the common case, on every audit event of the process: as cheap as possible
        return
    seen = _touched.get(threading.get_ident())
    if seen is None:
        return
    try:
        if event == "open":
            path = args[0]
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).endswith(MODULE_FILES):
                return  # an import reads the module
            seen.append(f"open({path!r})")
        elif event in TOUCHING:
            seen.append(f"{event}{args!r}"[:200])
    except Exception:  # an audit hook must never raise into the code it watches
        pass


@contextmanager
def touches_nothing(what: str) -> Iterator[None]:
    """Fail (``AssertionError``) when the block opens a file, a socket or a process in this thread."""
    global _hook_installed
    with _hooked:
        if not _hook_installed:  # a hook cannot be removed: one for the whole process, idle when nothing is watched
            sys.addaudithook(_audit)
            _hook_installed = True
    seen: list[str] = []
    _touched[threading.get_ident()] = seen
    try:
        yield
    finally:
        del _touched[threading.get_ident()]
    assert not seen, f"{what} touched {', '.join(seen[:3])}: it must not open files, sockets or processes (do that in start())"


def describes_itself(cls: type[Any], kind: registry.Kind, config: dict[str, Any], processors: tuple[str, ...]) -> None:
    """The declarations the docs and the config loader read: name, summary, an example that
    loads, a ``Config`` that refuses unknown keys, default processors that exist."""
    what = f"{kind[:-1]} {cls.__name__}"
    assert cls.name and cls.summary and cls.example, f"{what}: name, summary and example must be set (they feed the docs)"
    _rejects_unknown_keys(cls.Config, config, what)
    try:
        example = yaml.safe_load(cls.example)
    except yaml.YAMLError as exc:
        raise AssertionError(f"{what}: example is not YAML: {exc}") from None
    assert isinstance(example, dict) and example.get("type") == cls.name, (
        f"{what}: example must be one {kind[:-1]} entry, a mapping with type: {cls.name}")
    try:
        cls.Config.model_validate(example.get("config") or {})
    except ValidationError as exc:
        raise AssertionError(f"{what}: the config of its example does not validate: {exc}") from None
    pkind: registry.Kind = "preprocessors" if kind == "onramps" else "postprocessors"
    for name in processors:
        try:
            registry.load(pkind, name)
        except registry.UnknownPlugin as exc:
            raise AssertionError(f"{what}: default {pkind[:-1]} '{name}' does not exist: {exc}") from None


def validated(cls: type[Any], config: Callable[[], dict[str, Any]]) -> PluginConfig:
    """The plugin's config model for the options ``config()`` makes (as written in YAML)."""
    cfg = cls.Config.model_validate(config())
    assert isinstance(cfg, PluginConfig), f"{cls.__name__}: Config must subclass PluginConfig"
    return cfg


def context(base_dir: Path | None, metrics: Any = None, request_stop: Callable[[], None] | None = None) -> PluginContext:
    """A context like the engine's: the config's folder, and the services it offers."""
    ctx = PluginContext(COMPONENT_ID, base_dir or Path.cwd(), metrics=metrics)
    if request_stop is not None:
        ctx.request_stop = request_stop
    return ctx


async def stops_unstarted(what: str, stop: Callable[[], Awaitable[None]], timeout: float) -> None:
    """``stop()`` of an instance never started, twice: the runtime stops every plugin of a start that failed."""
    for _ in range(2):
        try:
            await asyncio.wait_for(stop(), timeout)
        except Exception as exc:
            raise AssertionError(f"{what}: stop() without start() raised {exc!r}") from exc

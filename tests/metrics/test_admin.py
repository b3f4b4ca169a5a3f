"""The admin endpoint: where /metrics renders (on the loop while renders are cheap, in a thread once one
was not), and what it refuses (foreign Host or Origin, a reload a cross-site form could send)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import aiohttp
import pytest

from headrace.daemon import admin
from headrace.daemon.hosts import AllowedHosts, host_name
from headrace.metrics.defs import Metrics
from tests.support.daemon import free_port


def test_cheap_renders_stay_on_the_loop_and_a_costly_one_moves_the_next_to_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    real = admin.generate_latest
    threads: list[str] = []
    cost = {"s": 0.0}

    def render(registry: Any) -> bytes:
        threads.append(threading.current_thread().name)
        end = time.thread_time() + cost["s"]
        while time.thread_time() < end:  # CPU, as the server measures it
            pass
        return real(registry)

    monkeypatch.setattr(admin, "generate_latest", render)

    async def scenario() -> list[bytes]:
        metrics = Metrics()
        metrics["headrace_worker_jobs_total"].labels("0").inc(7)
        server = admin.AdminServer(f"127.0.0.1:{free_port()}", metrics, lambda: True, dict, lambda: asyncio.sleep(0, {"ok": True}))
        await server.start()
        bodies = []
        try:
            async with aiohttp.ClientSession() as http:
                for spend in (0.0, admin.INLINE_RENDER_S * 3, 0.0, 0.0):
                    cost["s"] = spend
                    async with http.get(f"http://{server.host}:{server.port}/metrics") as resp:
                        assert resp.status == 200
                        bodies.append(await resp.read())
        finally:
            await server.stop()
        return bodies

    bodies = asyncio.run(scenario())
    main = threading.main_thread().name
    # 1st cheap: inline; 2nd inline too (the server cannot know in advance) but costly;
    # so the 3rd goes to a thread; it was cheap, so the 4th is back on the loop
    assert threads[0] == main and threads[1] == main
    assert threads[2] != main
    assert threads[3] == main
    assert all(b'headrace_worker_jobs_total{worker="0"} 7.0' in body for body in bodies)


class Calls:
    def __init__(self) -> None:
        self.reloads = 0

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"ok": True}


def _no_such_component(tap: Any) -> Any:
    raise ValueError("no component")


def _requests(cases: list[tuple[str, str, dict[str, str]]], allowed_hosts: tuple[str, ...] = (), token: str | None = None,
              loopback: bool = True) -> tuple[list[int], int]:  # fmt: skip
    """Send each (method, path, headers) to a real admin server on loopback; the statuses and the reloads it ran.
    ``loopback=False``: the server judges requests as one listening on another interface would (tests bind loopback only)."""
    calls = Calls()

    async def scenario() -> list[int]:
        server = admin.AdminServer(f"127.0.0.1:{free_port()}", Metrics(), lambda: True, dict, calls.reload, allowed_hosts,
                                   tap=_no_such_component, token=token)  # fmt: skip
        server.allowed.loopback = loopback
        await server.start()
        statuses = []
        try:
            async with aiohttp.ClientSession() as http:
                for method, path, headers in cases:
                    headers = {k: v.replace("PORT", str(server.port)) for k, v in headers.items()}
                    async with http.request(method, f"http://127.0.0.1:{server.port}{path}", headers=headers, data=b"") as resp:
                        statuses.append(resp.status)
        finally:
            await server.stop()
        return statuses

    return asyncio.run(scenario()), calls.reloads


def test_a_foreign_host_is_refused_dns_rebinding() -> None:
    statuses, _ = _requests([
        ("GET", "/status", {"Host": "attacker.example:PORT"}),
        ("GET", "/metrics", {"Host": "attacker.example"}),
        ("GET", "/health", {"Host": "127.0.0.1.attacker.example:PORT"}),
        ("GET", "/status", {"Host": "127.0.0.1:PORT"}),
        ("GET", "/status", {"Host": "localhost:PORT"}),
        ("GET", "/metrics", {"Host": "[::1]:PORT"}),
        ("GET", "/status", {"Host": "LOCALHOST."}),
    ])  # fmt: skip
    assert statuses == [403, 403, 403, 200, 200, 200, 200]


def test_allowed_hosts_adds_names() -> None:
    statuses, _ = _requests([("GET", "/status", {"Host": "metrics.example:PORT"}), ("GET", "/status", {"Host": "other.example"})],
                            allowed_hosts=("metrics.example",))  # fmt: skip
    assert statuses == [200, 403]


def test_a_foreign_origin_is_refused() -> None:
    statuses, _ = _requests([
        ("GET", "/status", {"Origin": "http://attacker.example"}),
        ("GET", "/metrics", {"Origin": "null"}),
        ("GET", "/status", {"Origin": "http://localhost:3000"}),  # another local site
        ("GET", "/status", {"Origin": "http://127.0.0.1:PORT"}),  # the endpoint itself
    ])  # fmt: skip
    assert statuses == [403, 403, 403, 200]


def test_reload_needs_a_request_no_cross_site_form_can_send_csrf() -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    statuses, reloads = _requests([
        ("POST", "/reload", form),
        ("POST", "/reload", {"Content-Type": "text/plain"}),
        ("POST", "/reload", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("POST", "/reload", {}),
        ("POST", "/reload", {"Content-Type": "application/json", "Origin": "http://attacker.example"}),
    ])  # fmt: skip
    assert (statuses, reloads) == ([415, 415, 415, 415, 403], 0)
    statuses, reloads = _requests([("POST", "/reload", {"Content-Type": "application/json"})])
    assert (statuses, reloads) == ([200], 1)


@pytest.mark.parametrize(
    ("listen", "extra", "allowed", "refused"),
    [
        ("127.0.0.1", (), ["127.0.0.1", "localhost", "::1", "127.0.0.2", "app.localhost"], ["10.0.0.1", "evil.example", "localhost.evil"]),
        ("::1", (), ["::1", "localhost", "127.0.0.1"], ["evil.example", "192.168.1.1"]),
        ("10.1.2.3", (), ["10.1.2.3"], ["localhost", "127.0.0.1", "10.1.2.4", "evil.example"]),
        ("10.1.2.3", ("box.example",), ["10.1.2.3", "box.example", "BOX.EXAMPLE."], ["evil.example"]),
        ("0.0.0.0", (), ["10.9.8.7", "::1", "localhost", socket.gethostname()], ["evil.example"]),
        ("127.0.0.1", ("*",), ["evil.example", "127.0.0.1"], []),
    ],
)
def test_allowed_host_names(listen: str, extra: tuple[str, ...], allowed: list[str], refused: list[str]) -> None:
    check = AllowedHosts(listen, 9898, extra)
    assert [n for n in allowed if not check(host_name(n))] == []
    assert [n for n in refused if check(host_name(n))] == []


def test_host_header_parsing() -> None:
    assert [host_name(h) for h in ("a.example:80", "A.Example", "[::1]:9898", "[::1]", "::1", "1.2.3.4:5")] == [
        "a.example", "a.example", "::1", "::1", "::1", "1.2.3.4",
    ]  # fmt: skip


TOKEN = "s3cret-token-0123456789"


def test_a_token_guards_reload_tap_and_replay_and_leaves_scrapes_open() -> None:
    json_ct = {"Content-Type": "application/json"}
    statuses, reloads = _requests([
        ("POST", "/reload", json_ct),
        ("POST", "/reload", {**json_ct, "Authorization": "Bearer wrong-token-0123456789"}),
        ("POST", "/reload", {**json_ct, "Authorization": f"Basic {TOKEN}"}),
        ("GET", "/tap?component=x", {}),
        ("POST", "/replay", json_ct),
        ("GET", "/metrics", {}),
        ("GET", "/ready", {}),
        ("GET", "/status", {}),
        ("POST", "/reload", {**json_ct, "Authorization": f"Bearer {TOKEN}"}),
        ("GET", "/tap?component=x", {"Authorization": f"bearer {TOKEN}"}),
    ], token=TOKEN)  # fmt: skip
    assert statuses == [401, 401, 401, 401, 401, 200, 200, 200, 200, 422], "422: the tap got past the guard to its own checks"
    assert reloads == 1


def test_tap_and_replay_off_loopback_need_a_token() -> None:
    statuses, _ = _requests([("GET", "/tap?component=x", {}), ("POST", "/replay", {"Content-Type": "application/json"})], loopback=False)
    assert statuses == [403, 404], "tap refused off loopback; replay (none wired here) too would be, after its 404"
    statuses, _ = _requests([("GET", "/tap?component=x", {"Authorization": f"Bearer {TOKEN}"})], loopback=False, token=TOKEN)
    assert statuses == [422]
    statuses, _ = _requests([("GET", "/tap?component=x", {})], loopback=True)
    assert statuses == [422], "on loopback without a token, as before"


def test_a_token_must_be_long_and_given_once(tmp_path: Any) -> None:
    from pydantic import ValidationError

    from headrace.config.model import MetricsConfig

    with pytest.raises(ValidationError, match="at least 16 characters"):
        MetricsConfig(token="short")
    with pytest.raises(ValidationError, match="not both"):
        MetricsConfig(token=TOKEN, token_file="t")
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert admin.admin_token(MetricsConfig(token_file="t"), tmp_path) == TOKEN
    (tmp_path / "short").write_text("abc")
    with pytest.raises(OSError, match="at least 16"):
        admin.admin_token(MetricsConfig(token_file="short"), tmp_path)
    with pytest.raises(OSError):
        admin.admin_token(MetricsConfig(token_file="missing"), tmp_path)

"""Offramp disk buffers (issue 16, item 1): ``buffer: {type: disk}`` between an offramp's queue and its sink."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import pytest

from tests.reliability.harness import HttpSink
from tests.support.daemon import Daemon, free_port, metric

N = 20000


def _config(tmp_path: Path, port: int, sink: int, buffer: str = "{type: disk, sync_interval: 50ms}", extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, state_dir: state}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms, checkpoint_interval: 50ms}}}}}}
offramps:
  out: {{type: http, codec: json, buffer: {buffer}, config: {{url: "http://127.0.0.1:{sink}/", retries: 0, backoff_max: 200ms}}}}
{extra}
links: {{src: [out{", copy" if extra else ""}]}}
""")
    return path


def _input(tmp_path: Path, n: int = N) -> None:
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))


def _checkpoint(tmp_path: Path) -> int:
    try:
        files = json.loads((tmp_path / "state" / "file-onramp" / "src.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return 0
    return max((f["offset"] for f in files), default=0)


@pytest.mark.slow
def test_a_source_commits_once_on_disk_and_a_sigkill_and_a_torn_tail_lose_nothing(tmp_path: Path) -> None:
    """The sink dies mid-run: the file source still reads and checkpoints to its end (its records are
    safe in the buffer), the daemon is SIGKILLed, a segment gets a torn tail; after the restart
    every record reaches the sink, the torn tail is cut and counted."""
    _input(tmp_path)
    port, sink_port = free_port(), free_port()
    sink = HttpSink(sink_port)
    cfg = _config(tmp_path, port, sink_port)
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: sink.count() >= 2000, timeout=30)
        sink.down = True  # the sink answers 503 from now on
        size = (tmp_path / "in.ndjson").stat().st_size
        d.wait_for(lambda: _checkpoint(tmp_path) == size, timeout=30)  # the source committed everything: on disk, not delivered
        assert sink.count() < N
        buffered = metric(port, 'headrace_buffer_events{component_id="out"}')
        assert buffered > 0, "what the sink did not take waits in the buffer"
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    segments = sorted((tmp_path / "state" / "buffers" / "out").glob("*.seg"))
    assert segments
    with open(segments[-1], "ab") as f:
        f.write(b"\x48\x52\x42\x31 half of an entry")  # a crash in the middle of a write
    before = len(sink.ids())
    sink.down = False
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: set(sink.ids()) == set(range(N)), timeout=60)
        assert metric(port, 'headrace_buffer_torn_total{component_id="out"}') == 1
        d.wait_for(lambda: metric(port, 'headrace_buffer_events{component_id="out"}', -1) == 0, timeout=10)
    finally:
        assert d.stop() == 0, d.stderr()
    assert "torn or corrupt tail" in d.stderr()
    ids = sink.ids()
    assert len(ids) - N <= before, "duplicates: at most what the sink had taken before the kill"
    assert not list((tmp_path / "state" / "buffers" / "out").glob("*.seg")), "all written: no segment left"


@pytest.mark.slow
def test_a_full_disk_holds_the_queue_back_and_nothing_is_lost_once_space_is_back(tmp_path: Path) -> None:
    """Files the daemon writes may grow to 256 KiB (RLIMIT_FSIZE: the disk is full for them): the
    buffer's appends fail, it says so, and the queue waits; once the limit is lifted every record
    arrives."""
    _input(tmp_path)
    port, sink_port = free_port(), free_port()
    sink = HttpSink(sink_port)
    sink.down = True

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))

    d = Daemon(_config(tmp_path, port, sink_port), preexec=small_files)
    try:
        d.wait_for(lambda: "cannot append to its disk buffer" in d.stderr(), timeout=30)
        assert sink.count() == 0 and d.proc.poll() is None
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space is back
        d.wait_for(lambda: "takes appends again" in d.stderr(), timeout=30)
        d.wait_for(lambda: metric(port, 'headrace_buffer_synced_events_total{component_id="out"}') == N, timeout=30)
        sink.down = False
        d.wait_for(lambda: set(sink.ids()) == set(range(N)), timeout=60)
    finally:
        assert d.stop() == 0, d.stderr()


@pytest.mark.slow
def test_drop_newest_keeps_a_healthy_branch_going_while_another_sink_is_dead(tmp_path: Path) -> None:
    """Fan-out to a file and to an HTTP sink that answers 503 forever: with a small disk buffer and
    ``when_full: drop_newest`` on the HTTP branch, the file gets every record, the drops are
    counted, and the drain does not wait for the dead sink."""
    _input(tmp_path)
    port, sink_port = free_port(), free_port()
    sink = HttpSink(sink_port)
    sink.down = True
    cfg = _config(tmp_path, port, sink_port, buffer="{type: disk, max_bytes: 64KiB, when_full: drop_newest}",
                  extra="  copy: {type: file, codec: json, config: {path: copy.ndjson}}")  # fmt: skip
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _lines(tmp_path / "copy.ndjson") == N, timeout=60)
        dropped = metric(port, 'headrace_buffer_dropped_events_total{component_id="out",reason="full"}')
        assert dropped > 0
        assert metric(port, 'headrace_buffer_bytes{component_id="out"}') <= 64 << 10
    finally:
        assert d.stop(timeout=15) == 0, d.stderr()
    assert sorted(json.loads(x)["id"] for x in (tmp_path / "copy.ndjson").read_text().splitlines()) == list(range(N))
    assert "stay in its disk buffer for the next start" in d.stderr()


def _immutable(path: Path, on: bool) -> bool:
    """``chattr +i`` / ``-i``: not even root may write the file (its open descriptors included)."""
    import subprocess

    try:
        return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, timeout=10).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_file_sink_made_unwritable_holds_nothing_back_and_a_sigkill_loses_nothing(tmp_path: Path) -> None:
    """An offramp disk buffer in front of a file sink whose file is made unwritable mid-run
    (``chattr +i``: EPERM for every write, even as root): the source still reads and commits to
    the end (its records are on disk), the daemon is SIGKILLed; the file is made writable again,
    and after the restart it holds every record."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    if not _immutable(probe, True):
        pytest.skip("chattr +i is not supported here (no e2fsprogs, or a file system without the immutable flag)")
    _immutable(probe, False)
    _input(tmp_path, 1000)
    port = free_port()
    out = tmp_path / "out.ndjson"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, state_dir: state}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms, checkpoint_interval: 50ms}}}}}}
offramps: {{out: {{type: file, codec: json, buffer: {{type: disk, sync_interval: 50ms}}, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _lines(out) == 1000, timeout=30)
        assert _immutable(out, True)
        with open(tmp_path / "in.ndjson", "a") as f:  # the rest arrives while the sink refuses every write
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(1000, N)))
        size = (tmp_path / "in.ndjson").stat().st_size
        d.wait_for(lambda: _checkpoint(tmp_path) == size, timeout=30)  # everything read and committed: safe on disk
        d.wait_for(lambda: "Operation not permitted" in d.stderr(), timeout=30)
        written = _lines(out)
        assert written == 1000
        assert metric(port, 'headrace_buffer_events{component_id="out"}') == N - written, "the rest waits in the buffer"
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        _immutable(out, False)
        d.stop()
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _lines(out) >= N, timeout=60)
        d.wait_for(lambda: metric(port, 'headrace_buffer_events{component_id="out"}', -1) == 0, timeout=10)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(set(ids)) == list(range(N)), "every record, once the file is writable again"
    assert len(ids) == N, "no duplicates: the watermark was saved while the sink refused"


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_a_buffer_folder_is_held_by_one_process(tmp_path: Path) -> None:
    from headrace.metrics.defs import Metrics
    from headrace.runtime.diskbuffer import BufferInUse, DiskBuffer

    first = DiskBuffer(tmp_path / "b", 1 << 20, "block", 0.1, Metrics(), "out")
    first.open()
    second = DiskBuffer(tmp_path / "b", 1 << 20, "block", 0.1, Metrics(), "out")
    with pytest.raises(BufferInUse, match="in use by another process"):
        second.open()
    first.lock_file.close()


@pytest.mark.slow
def test_an_onramp_disk_buffer_keeps_every_synced_record_across_a_sigkill(tmp_path: Path) -> None:
    """A tcp source streams 200,000 numbered records into an onramp with a disk buffer, in front
    of a slow sink; SIGKILL once the buffer synced 100,000; after the restart every record the
    buffer had synced (the count read from its metric before the kill) reaches the sink."""
    import socket
    import threading

    n = 200_000
    port, src, sink_port = free_port(), free_port(), free_port()
    sink = HttpSink(sink_port, delay=0.02)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, state_dir: state}}
onramps: {{src: {{type: tcp, codec: json, buffer: {{type: disk, sync_interval: 50ms}}, config: {{port: {src}}}}}}}
offramps: {{out: {{type: http, codec: json, config: {{url: "http://127.0.0.1:{sink_port}/"}}}}}}
links: {{src: [out]}}
""")

    def stream() -> None:
        try:
            with socket.create_connection(("127.0.0.1", src), timeout=30) as s:
                s.sendall(b"".join(b'{"id": %d}\n' % i for i in range(n)))
        except OSError:
            pass  # the daemon was killed

    synced = 'headrace_buffer_synced_events_total{component_id="src"}'
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _listening(src), timeout=30)  # the source listens (its buffer was read back first)
        threading.Thread(target=stream, daemon=True).start()
        d.wait_for(lambda: metric(port, synced) >= 100_000, timeout=60)
        durable = int(metric(port, synced))
        delivered_before = sink.count()
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    assert delivered_before < durable, "the kill came while synced records still waited for the sink"
    sink.delay = 0.0
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: set(range(durable)) <= set(sink.ids()), timeout=90)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = sink.ids()
    dups = len(ids) - len(set(ids))
    assert dups <= delivered_before, f"{dups} duplicates: only records delivered before the kill may come again"


def test_an_http_request_into_a_buffered_onramp_is_answered_once_on_disk_and_delivered_after_a_restart(tmp_path: Path) -> None:
    """With a disk buffer on the http onramp, a request is answered 200 once its records are
    fsynced, though the sink is down; a SIGKILL then loses none of them."""
    import urllib.request

    port, web, sink_port = free_port(), free_port(), free_port()
    sink = HttpSink(sink_port)
    sink.down = True
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, state_dir: state}}
onramps: {{web: {{type: http, codec: json, buffer: {{type: disk}}, config: {{port: {web}}}}}}}
offramps: {{out: {{type: http, codec: json, config: {{url: "http://127.0.0.1:{sink_port}/", retries: 0}}}}}}
links: {{web: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _listening(web), timeout=30)
        for k in range(5):
            body = "".join(json.dumps({"id": k * 10 + i}) + "\n" for i in range(10)).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{web}/", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200 and json.loads(resp.read())["events"] == 10
        assert metric(port, 'headrace_buffer_synced_events_total{component_id="web"}') == 50 and sink.count() == 0
        d.signal(signal.SIGKILL)
        d.wait(10)
    finally:
        d.stop()
    sink.down = False
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: sorted(sink.ids()) == list(range(50)), timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _buffer_with_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int = 1 << 20) -> tuple[object, list[int]]:
    """A real buffer on disk; the fsyncs it does are counted (file descriptors per sync)."""
    from headrace.metrics.defs import Metrics
    from headrace.runtime import diskbuffer

    fsynced: list[int] = []
    real = diskbuffer._fsync_each

    def spy(fds: list[int], folder: Path | None) -> None:
        fsynced.append(len(fds))
        real(fds, folder)

    monkeypatch.setattr(diskbuffer, "_fsync_each", spy)
    buf = diskbuffer.DiskBuffer(tmp_path / "b", 1 << 30, "block", 0.1, Metrics(), "out")
    buf.segment_bytes = segment_bytes
    buf.open()
    return buf, fsynced


def test_an_entry_the_sink_took_before_a_sync_releases_its_upstream_and_needs_no_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    async def main() -> None:
        buf, fsynced = _buffer_with_spy(tmp_path, monkeypatch)
        released: list[str] = []
        a = await buf.append([b'{"id":1}'], [0], None, "src")
        a.when_safe(lambda: released.append("a"))
        taken, (records, *_) = await buf.take()
        assert taken is a and records == [b'{"id":1}'] and released == []
        buf.done(a)  # the sink took it before any fsync
        assert released == ["a"], "upstream is released when the sink took it"
        await buf.sync()
        assert fsynced == [], "nothing waits for a sync: no fsync"
        assert not list((tmp_path / "b").glob("*.seg")), "an entry the sink took before the sync is never written"
        b = await buf.append([b'{"id":2}'], [0], None, "src")
        b.when_safe(lambda: released.append("b"))
        await buf.sync()
        assert fsynced == [1] and released == ["a", "b"], "an entry not yet written is synced, then released"
        assert b.synced
        await buf.close()

    asyncio.run(main())


def test_a_sync_covers_only_segments_with_entries_not_yet_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries written to three segments (the sink fell behind); the first two are then written to
    the sink before the sync: only the third segment's file is fsynced, and the segments of done
    entries are unlinked."""
    import asyncio

    async def main() -> None:
        buf, fsynced = _buffer_with_spy(tmp_path, monkeypatch, segment_bytes=1 << 16)
        big = [b"x" * 40_000]
        entries = [await buf.append(big, [0], None, "src") for _ in range(3)]
        assert all(e.segment is None for e in entries), "in memory until a sync"
        await buf.write_pending()
        assert len({id(e.segment) for e in entries}) == 3 and len(list((tmp_path / "b").glob("*.seg"))) == 3
        for _ in range(2):
            e, _content = await buf.take()
            buf.done(e)
        await buf.sync()
        assert fsynced == [1], "one file synced: the segment whose entry waits for the sink"
        assert all(e.safe for e in entries)
        await buf.close()  # waits for the unlinks on the buffer's I/O thread
        assert [p.name for p in (tmp_path / "b").glob("*.seg")] == [f"{2:020d}.seg"], "the done entries' segments are gone"

    asyncio.run(main())

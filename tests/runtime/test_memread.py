"""Workers read their jobs' records out of the daemon's memory (``daemon.job_transport: memory``,
the default; ``headrace.runtime.workers.memread``); a worker the kernel does not let do that gets
them through its socket, at its set-up or at any job later, and nothing is lost either way."""

from __future__ import annotations

import os
import shutil
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from headrace.runtime.workers import memread
from tests.support import seccomp
from tests.support.daemon import Daemon, ids_written, lines_written

# -- the reads themselves, in this process ----------------------------------------------------------


def test_blobs_read_back_joined_in_one_bytes() -> None:
    blobs = [b"abc" * 1000, b"", b"x", os.urandom(70_000)]
    where = memread.locate(blobs)
    assert where is not None
    assert len(where) == 3 * 16  # an address and a length per non-empty blob
    got = memread.read(os.getpid(), where)
    assert type(got) is bytes and got == b"".join(blobs)


def test_more_blobs_than_one_call_takes() -> None:
    blobs = [i.to_bytes(4, "little") * (1 + i % 7) for i in range(3 * memread.IOV_MAX + 5)]
    got = memread.read(os.getpid(), memread.locate(blobs))  # type: ignore[arg-type]
    assert got == b"".join(blobs)


@pytest.mark.parametrize(("iov_max", "call_bytes"), [(2, 1 << 30), (1024, 1000), (3, 700)])
def test_calls_are_cut_by_count_and_by_bytes(monkeypatch: pytest.MonkeyPatch, iov_max: int, call_bytes: int) -> None:
    """The kernel reads at most MAX_RW_COUNT bytes (2 GiB less a page) a call, whatever was asked:
    a larger job is read in several calls, a blob larger than a call cut across two (shown here
    with small limits)."""
    monkeypatch.setattr(memread, "IOV_MAX", iov_max)
    monkeypatch.setattr(memread, "MAX_CALL_BYTES", call_bytes)
    blobs = [os.urandom(n) for n in (2500, 1, 999, 1000, 3, 4001, 7)]
    where = memread.locate(blobs)
    assert where is not None
    pairs = array("Q")
    pairs.frombytes(where)
    calls = memread._calls(pairs)
    assert all(len(c) // 2 <= iov_max and sum(c[1::2]) <= call_bytes for c in calls)
    assert sum(sum(c[1::2]) for c in calls) == sum(map(len, blobs))
    assert memread.read(os.getpid(), where) == b"".join(blobs)


def test_only_bytes_are_read_by_reference() -> None:
    assert memread.locate([b"a", memoryview(b"bc")]) is None
    assert memread.locate([bytearray(b"a")]) is None
    assert memread.read(os.getpid(), memread.locate([]) or b"") == b""


def test_memory_not_there_is_an_oserror_not_a_crash() -> None:
    unmapped = array("Q", [8, 4096]).tobytes()  # the first page is never mapped
    with pytest.raises(OSError, match="process_vm_readv"):
        memread.read(os.getpid(), unmapped)
    assert "cannot read the daemon's memory" in (memread.probe(os.getpid(), unmapped, b"x" * 4096) or "")


def test_the_probe_compares_what_it_read() -> None:
    here = b"headrace probe " * 3
    assert memread.probe(os.getpid(), memread.locate([here]), here) is None
    assert memread.probe(os.getpid(), memread.locate([here]), here[::-1]) == "read the daemon's memory but found other bytes there"
    assert memread.probe(os.getpid(), None, here) is not None


# -- a daemon ------------------------------------------------------------------------------------------

CONFIG = """
version: 1
daemon: {{workers: 2, metrics: {{listen: null}}{setting}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:{stage}"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
"""
STAGES = '''
def touch(event, meta):
    event["seen"] = True
    return event

FILTERED = []

def refuse_after_first_job(event, meta):
    """Installs, in this worker (each, at its first job), a filter that makes process_vm_readv fail with EPERM from now on."""
    if not FILTERED:
        import seccomp_refusal  # tests/support/seccomp.py, copied beside this module
        seccomp_refusal.refuse("process_vm_readv")
        FILTERED.append(True)
    event["seen"] = True
    return event
'''
N = 20_000
PAD = "p" * 600


def _records(first: int, n: int) -> str:
    return "".join(f'{{"id":{i},"pad":"{PAD}"}}\n' for i in range(first, first + n))


def _written_by(pid: int) -> int:
    """Bytes the process wrote (any file or socket), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def _run(tmp_path: Path, setting: str, stage: str = "touch", preexec: Callable[[], None] | None = None) -> tuple[int, list[object], str]:
    """(bytes the daemon wrote while moving the records, the ids written, its stderr)."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "in.ndjson").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(setting=setting, stage=stage))
    (tmp_path / "stages.py").write_text(STAGES)
    shutil.copy(seccomp.__file__, tmp_path / "seccomp_refusal.py")
    d = Daemon(cfg, preexec=preexec)
    try:
        with (tmp_path / "in.ndjson").open("a") as f:  # a first record: the workers are set up once it is out
            f.write(_records(0, 1))
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= 1, timeout=30)
        before = _written_by(d.pid)
        with (tmp_path / "in.ndjson").open("a") as f:
            f.write(_records(1, N - 1))
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= N, timeout=120, interval=0.1)
        wrote = _written_by(d.pid) - before
    finally:
        code = d.stop()
    err = d.stderr_path.read_text()
    assert code == 0, err
    return wrote, ids_written(tmp_path / "out.ndjson"), err


def test_jobs_read_from_memory_spare_the_daemon_a_copy(tmp_path: Path) -> None:
    """Through the socket the daemon writes every record twice (to a worker, then to the file);
    read from its memory, once. The output is the same, in order."""
    by_memory, ids_memory, err_memory = _run(tmp_path / "memory", "")
    by_socket, ids_socket, err_socket = _run(tmp_path / "socket", ", job_transport: socket")
    assert ids_memory == ids_socket == list(range(N))
    assert (tmp_path / "memory" / "out.ndjson").read_bytes() == (tmp_path / "socket" / "out.ndjson").read_bytes()
    size = N * (len(PAD) + 30)
    assert by_socket > 1.8 * size, by_socket  # the jobs and the file
    assert by_memory < 1.3 * size, by_memory  # the file, and the jobs' headers
    assert "through its socket" not in err_memory + err_socket


def _libseccomp() -> None:
    if not seccomp.available():
        pytest.skip("libseccomp is not installed")


def test_workers_the_kernel_refuses_get_their_jobs_through_the_socket(tmp_path: Path) -> None:
    _libseccomp()
    # in the daemon and its workers: a container profile, or a unit whose filter leaves @ipc out
    wrote, ids, err = _run(tmp_path, "", preexec=seccomp.refusing("process_vm_readv"))
    assert ids == list(range(N))
    assert wrote > 1.8 * N * (len(PAD) + 30)  # the records went through the sockets
    assert err.count("gets its jobs through its socket") == 1, err  # said once, not once per worker
    assert "cannot read the job" not in err, err  # found at set-up: no job was sent by reference
    assert "Operation not permitted" in err and "Traceback" not in err, err


def test_a_job_the_worker_cannot_read_any_more_goes_again_through_the_socket(tmp_path: Path) -> None:
    """The kernel allowed the read at set-up and refuses it later: the job is sent again, whole,
    and so is every later one; nothing is lost, no record goes to err, the worker is not replaced."""
    _libseccomp()
    wrote, ids, err = _run(tmp_path, "", stage="refuse_after_first_job")
    assert ids == list(range(N))
    assert wrote > 1.6 * N * (len(PAD) + 30), wrote  # after the first jobs, the records went through the socket
    assert "cannot read the job from the daemon's memory" in err, err
    assert err.count("gets its jobs through its socket") == 1, err  # the same reason for every job: said once
    assert "Traceback" not in err and "respawn" not in err and "crash" not in err.lower(), err

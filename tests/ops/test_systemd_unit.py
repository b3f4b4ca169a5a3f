"""Checks of the systemd unit in systemd/ with systemd's own tools.

`systemd-analyze verify` checks that every Exec*= binary exists, so the tests verify a
copy of the unit whose ExecStart=/ExecReload= point at an executable that exists here:
the venv's `headrace` console script when installed, else `python -m headrace`. The
unit itself keeps its install paths (/usr/local/bin/headrace, /etc/headrace/...).

On the development container (systemd 252, not booted with systemd as PID 1) a clean
unit makes `systemd-analyze verify` print nothing at all. Other hosts may print lines
that have nothing to do with the unit under test (warnings about other installed units,
or "Failed to ... /proc/..." in restricted containers). Such lines never name our unit,
so only lines that mention "headrace" count as findings; the others are shown in the
assertion message when a test fails, but do not fail it on their own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "headrace.service"
DROPIN = REPO / "systemd" / "headrace-notify-reload.conf"
INSTALLED_BINARY = "/usr/local/bin/headrace"
MAX_EXPOSURE = 2.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 20  # daemon.shutdown_timeout default, docs/reference/config.md

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux-only")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found on PATH (Debian package 'systemd')")
    return path


@pytest.fixture(scope="module")
def systemd_version(systemd_analyze: str) -> int:
    out = run([systemd_analyze, "--version"]).stdout
    m = re.match(r"systemd (\d+)", out)
    assert m, out
    return int(m.group(1))


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kw)


def headrace_command() -> str:
    """An absolute command line that starts headrace on this machine."""
    bindir = Path(sys.executable).parent
    for candidate in (bindir / "headrace", shutil.which("headrace")):
        if candidate and Path(candidate).is_file() and " " not in str(candidate):
            return str(candidate)
    python = sys.executable
    assert " " not in python, "systemd needs the path quoted; keep test paths simple"
    return f"{python} -m headrace"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, keeping repeated keys (systemd unit files allow them)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        assert not line.endswith("\\"), "keep directives on one line"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def make_testable_copy(dest_dir: Path) -> Path:
    """The unit with Exec lines pointing at a headrace that exists here."""
    text = UNIT.read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith(("ExecStart=", "ExecReload=")):
            line = line.replace(INSTALLED_BINARY, headrace_command())
        lines.append(line)
    unit = dest_dir / "headrace.service"
    unit.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return unit


def findings(proc: subprocess.CompletedProcess[str]) -> tuple[list[str], list[str]]:
    """(lines about our unit, unrelated lines) from a systemd-analyze run."""
    ours: list[str] = []
    other: list[str] = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.strip():
            continue
        (ours if "headrace" in line else other).append(line)
    return ours, other


# --------------------------------------------------------------------------- content


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def seconds(value: str) -> float:
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", value):
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "min": 60, "m": 60, "h": 3600}[suffix]
    return total


def test_unit_lifecycle(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["ExecStart"] == [f"{INSTALLED_BINARY} run /etc/headrace/headrace.yaml"]
    # Validate first: a bad config (exit 78) fails the reload before any signal is sent.
    assert svc["ExecReload"] == [
        f"{INSTALLED_BINARY} check /etc/headrace/headrace.yaml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert svc["WatchdogSec"] == ["30s"]
    assert svc["KillMode"] == ["mixed"]
    assert seconds(svc["TimeoutStopSec"][0]) > DEFAULT_SHUTDOWN_TIMEOUT_S
    assert svc["Restart"] == ["on-failure"]
    assert "78" in svc["RestartPreventExitStatus"][0].split()
    assert "PYTHONUNBUFFERED=1" in " ".join(svc["Environment"]).split()
    assert svc["LimitNOFILE"] == ["65536"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_identity_and_sandbox(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    expected = {
        "DynamicUser": "yes",
        "ConfigurationDirectory": "headrace",
        "StateDirectory": "headrace",
        "RuntimeDirectory": "headrace",
        "UMask": "0077",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    for key, value in expected.items():
        assert svc.get(key) == [value], key
    # AF_UNIX: sd_notify, journald; AF_INET/AF_INET6: Kafka, TCP/UDP/HTTP, metrics.
    assert set(" ".join(svc["RestrictAddressFamilies"]).split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert svc["SystemCallFilter"][0] == "@system-service"


def syscall_groups(systemd_analyze: str) -> dict[str, set[str]]:
    """Every @group of `systemd-analyze syscall-filter`, fully expanded."""
    out = run([systemd_analyze, "syscall-filter"]).stdout
    raw: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = raw.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())

    def expand(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        result: set[str] = set()
        for member in raw[name]:
            if member.startswith("@"):
                if member not in seen:
                    result |= expand(member, seen | {name})
            else:
                result.add(member)
        return result

    return {name: expand(name) for name in raw}


def allowed_syscalls(filters: list[str], groups: dict[str, set[str]]) -> set[str]:
    """Effective allow list of SystemCallFilter= lines (first one an allow list)."""
    allowed: set[str] = set()
    for i, line in enumerate(filters):
        deny = line.startswith("~")
        assert i > 0 or not deny, "the first line is an allow list (deny-list-first units are not used here)"
        names: set[str] = set()
        for item in line.lstrip("~").split():
            names |= groups[item] if item.startswith("@") else {item}
        if deny:
            allowed -= names
        else:  # later allow lines add to the first
            allowed |= names
    return allowed


# System calls a CPython 3.11 daemon of this shape makes. The list is the union of
# (a) what `strace -f` recorded for a small program doing what headrace does: a worker
# Process per start method (fork, spawn, forkserver) fed through a Pipe plus a
# multiprocessing.shared_memory block, an mp.Queue, a fork-based ProcessPoolExecutor
# driven from asyncio, an asyncio TCP server and client on 127.0.0.1, UDP/IPv6/AF_UNIX
# sockets, loop.add_signal_handler, asyncio.to_thread and a temporary directory; and
# (b) close relatives glibc or the kernel may pick instead (epoll_pwait, ppoll, dup3...).
PYTHON_DAEMON_SYSCALLS = """
    accept4 access arch_prctl bind brk chdir chmod clone clone3 close close_range connect
    epoll_create1 epoll_ctl epoll_wait execve exit exit_group fcntl ftruncate futex getcwd
    getdents64 getpeername getpid getrandom getsockname getsockopt gettid ioctl link listen
    lseek madvise mkdir mmap mprotect mremap munmap newfstatat openat pipe2 poll pread64
    prlimit64 read readlink recvfrom recvmsg rmdir rseq rt_sigaction rt_sigprocmask
    rt_sigreturn sched_getaffinity sendmsg sendto set_robust_list set_tid_address setsockopt
    socket socketpair sysinfo unlink unlinkat vfork wait4 write

    fork waitid kill tgkill pidfd_open dup dup3 readv writev pwrite64 memfd_create fstat
    statx readlinkat rename renameat2 getppid getuid geteuid getgid getegid shutdown
    epoll_pwait eventfd2 ppoll pselect6 select sigaltstack clock_gettime clock_nanosleep
    nanosleep sched_yield getrusage uname setsid setpgid umask flock

    getpriority setpriority

    process_vm_readv
""".split()  # noqa: SIM905 - easier to read and extend than a list literal


def test_syscall_filter_allows_what_a_python_worker_pool_needs(systemd_analyze: str, unit: dict[str, dict[str, list[str]]]) -> None:
    groups = syscall_groups(systemd_analyze)
    allowed = allowed_syscalls(unit["Service"]["SystemCallFilter"], groups)
    missing = sorted(set(PYTHON_DAEMON_SYSCALLS) - allowed)
    assert not missing, f"SystemCallFilter blocks system calls headrace needs: {missing}"
    # ...and the privileged ones stay out.
    for name in ("mount", "reboot", "init_module", "setuid", "chroot", "settimeofday", "sched_setaffinity", "setrlimit"):
        assert name not in allowed, name
    # Denied calls fail with an error instead of killing the process (or a worker).
    assert unit["Service"]["SystemCallErrorNumber"] == ["EPERM"]


# --------------------------------------------------------------------------- systemd-analyze


def test_systemd_analyze_verify_is_clean(systemd_analyze: str, tmp_path: Path) -> None:
    unit = make_testable_copy(tmp_path)
    proc = run([systemd_analyze, "verify", "--man=no", str(unit)], cwd=tmp_path)
    ours, other = findings(proc)
    assert not ours, "\n".join([*ours, "--- unrelated output ---", *other])
    if not other:
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_systemd_analyze_verify_of_installed_paths_only_misses_the_binary(systemd_analyze: str, tmp_path: Path) -> None:
    """The unit as shipped: nothing wrong except that headrace is not installed here."""
    if Path(INSTALLED_BINARY).exists():
        pytest.skip(f"{INSTALLED_BINARY} is installed: covered by the clean verify test")
    unit = tmp_path / "headrace.service"
    shutil.copy(UNIT, unit)
    proc = run([systemd_analyze, "verify", "--man=no", str(unit)], cwd=tmp_path)
    ours, _ = findings(proc)
    assert ours, "expected a complaint about the missing binary"
    for line in ours:
        assert f"Command {INSTALLED_BINARY} is not executable" in line, line


def test_notify_reload_dropin(systemd_analyze: str, systemd_version: int, tmp_path: Path) -> None:
    unit = make_testable_copy(tmp_path)
    dropin_dir = tmp_path / "headrace.service.d"
    dropin_dir.mkdir()
    shutil.copy(DROPIN, dropin_dir / "notify-reload.conf")

    dropin = parse_unit(DROPIN.read_text(encoding="utf-8"))
    assert dropin == {"Service": {"Type": ["notify-reload"], "ReloadSignal": ["SIGHUP"], "ExecReload": [""]}}

    proc = run([systemd_analyze, "verify", "--man=no", str(unit)], cwd=tmp_path)
    ours, other = findings(proc)
    if systemd_version >= 253:
        assert not ours, "\n".join([*ours, "--- unrelated output ---", *other])
    else:
        # Older systemd does not know the two settings (and says so); nothing else may fail.
        unknown = [line for line in ours if "notify-reload" in line or "ReloadSignal" in line]
        assert len(unknown) == 2, "\n".join(ours)
        assert unknown == ours, "\n".join(ours)


def test_security_exposure_is_low(systemd_analyze: str, tmp_path: Path) -> None:
    unit = make_testable_copy(tmp_path)
    proc = run([systemd_analyze, "security", "--offline=yes", "--no-pager", str(unit)], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for headrace\.service:\s*([0-9.]+)", output)
    assert m, output
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, output

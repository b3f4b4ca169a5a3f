"""A real RabbitMQ broker (Debian's ``rabbitmq-server``) on free loopback ports, stopped by its PIDs.

The node is the tests' own: its name, AMQP port, distribution port, Mnesia and log folders,
config file and (empty) plugin list are its own, and so is the ``epmd`` it registers with
(started here on a free port, bound to 127.0.0.1, stopped by its PID). A stop and a start keep
the node's data (durable queues and persistent messages). RabbitMQ boots in several seconds:
share one per test module. Ready means: the port answers the AMQP protocol header with
``connection.start``. The node and its epmd get SIGTERM when the thread that started them ends
(``PR_SET_PDEATHSIG``): a test process killed without teardown leaves nothing running. Start
them from the main thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.daemon import alive, free_port, stop_server

SERVER_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the package's own start script (the /usr/sbin wrapper switches user)


def rabbitmq_server_script() -> str:
    if not Path(SERVER_SCRIPT).exists():
        raise RuntimeError("rabbitmq-server is missing: scripts/ensure-system-deps.sh installs it (Debian package rabbitmq-server)")
    return SERVER_SCRIPT


def epmd_binary() -> str:
    exe = shutil.which("epmd") or next((p for p in ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd") if Path(p).exists()), None)
    if exe is None:
        raise RuntimeError("epmd is missing: it comes with rabbitmq-server (Debian package erlang-base)")
    return exe


def _dies_with_its_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (a run killed by pytest-timeout leaves no node behind)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def answers_amqp(port: int) -> bool:
    """Whether 127.0.0.1:port speaks AMQP 0-9-1: the protocol header is answered by a method frame on channel 0 (connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            head = s.recv(7)
            return len(head) == 7 and head[0] == 1 and head[1:3] == b"\x00\x00"
    except OSError:
        return False


class RabbitMQ:
    def __init__(self, folder: Path) -> None:
        self.script = rabbitmq_server_script()
        self.epmd_exe = epmd_binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"hr{uuid.uuid4().hex[:10]}@localhost"
        (folder / "rabbitmq.conf").write_text(f"""
listeners.tcp.default = 127.0.0.1:{self.port}
disk_free_limit.absolute = 1MB
log.console = false
log.file.level = warning
""")
        (folder / "enabled_plugins").write_text("[].\n")  # no management plugin (nor any other)
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        f = self.folder
        return {**os.environ, "HOME": str(f),  # the Erlang cookie goes there
                "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(f / "mnesia"), "RABBITMQ_LOG_BASE": str(f / "log"), "RABBITMQ_PID_FILE": str(f / "rabbit.pid"),
                "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq.conf"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(f / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"), "RABBITMQ_CONF_ENV_FILE": str(f / "rabbitmq-env.conf"),
                "RABBITMQ_SCHEDULER_BIND_TYPE": "u",  # a shared machine: no scheduler pinned to a core
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}  # fmt: skip

    def start(self) -> None:
        env = self._env()
        if self.epmd is None:
            self.epmd = subprocess.Popen([self.epmd_exe, "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_dies_with_its_parent)  # fmt: skip
        (self.folder / "rabbit.pid").unlink(missing_ok=True)
        out = open(self.folder / "server.out", "ab")  # noqa: SIM115 - the server writes it while it runs
        # its own session: the start script runs the Erlang VM as its child and stops it on SIGTERM
        self.proc = subprocess.Popen([self.script], env=env, cwd=self.folder, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_dies_with_its_parent)  # fmt: skip
        out.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.proc.returncode}): {(self.folder / 'server.out').read_text()[-3000:]}")
            if answers_amqp(self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("rabbitmq-server did not answer AMQP within 90 s")

    def _vm_pid(self) -> int | None:
        try:
            return int((self.folder / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the node (its start script stops the VM on SIGTERM) and its epmd, by PID."""
        vm = self._vm_pid()
        stop_server(self.proc)
        self.proc = None
        if vm is not None and alive(vm):  # the script was killed before it could stop the VM
            os.kill(vm, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(vm) and time.monotonic() < deadline:
                time.sleep(0.05)
        stop_server(self.epmd)
        self.epmd = None


class _Frames:
    """AMQP frames read from a socket (pamqp decodes them)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> object:
        from pamqp import exceptions, frame

        while True:
            if len(self.buf) >= 7:
                try:
                    used, _channel, value = frame.unmarshal(self.buf)
                except exceptions.UnmarshalingException:
                    pass  # not all of it yet
                else:
                    self.buf = self.buf[used:]
                    return value
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buf += chunk

    def expect(self, kind: type) -> object:
        value = self.next()
        if not isinstance(value, kind):
            raise RuntimeError(f"expected {kind.__name__} from the broker, got {value!r}")
        return value


def preload(port: int, queue: str, payloads: list[bytes], user: str = "guest", password: str = "guest") -> None:
    """Persistent messages into the durable queue ``queue`` (declared here), every one confirmed by the broker.

    Written as raw AMQP frames, thousands per write: aio-pika writes (and awaits) one message at a
    time, about 3,000 a second on the development machine, too slow to seed a test or a benchmark
    with 50,000 (what a connector reads is not what this measures)."""
    from pamqp import body, commands, frame, header

    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        frames = _Frames(s)
        s.sendall(header.ProtocolHeader().marshal())
        frames.expect(commands.Connection.Start)
        s.sendall(frame.marshal(commands.Connection.StartOk(client_properties={}, mechanism="PLAIN", response=f"\0{user}\0{password}",
                                                            locale="en_US"), 0))  # fmt: skip
        tune: Any = frames.expect(commands.Connection.Tune)
        frame_max = tune.frame_max or 131072
        s.sendall(frame.marshal(commands.Connection.TuneOk(channel_max=1, frame_max=frame_max, heartbeat=0), 0))
        s.sendall(frame.marshal(commands.Connection.Open(virtual_host="/"), 0))
        frames.expect(commands.Connection.OpenOk)
        for method, ok in ((commands.Channel.Open(), commands.Channel.OpenOk), (commands.Queue.Declare(queue=queue, durable=True), commands.Queue.DeclareOk),
                           (commands.Confirm.Select(), commands.Confirm.SelectOk)):  # fmt: skip
            s.sendall(frame.marshal(method, 1))
            frames.expect(ok)
        publish = frame.marshal(commands.Basic.Publish(exchange="", routing_key=queue), 1)
        headers: dict[int, bytes] = {}  # one content header per body size
        confirmed = 0
        for start in range(0, len(payloads), 2000):
            parts = []
            for p in payloads[start : start + 2000]:
                if len(p) > frame_max - 8:
                    raise ValueError(f"a message of {len(p)} bytes needs more than one body frame: not supported here")
                if len(p) not in headers:
                    headers[len(p)] = frame.marshal(header.ContentHeader(body_size=len(p), properties=commands.Basic.Properties(delivery_mode=2)), 1)
                parts += (publish, headers[len(p)], frame.marshal(body.ContentBody(p), 1))
            s.sendall(b"".join(parts))
            sent = min(start + 2000, len(payloads))
            while confirmed < sent:  # read the confirmations of this chunk before the next (the broker never waits on us)
                ack: Any = frames.next()
                if isinstance(ack, commands.Basic.Nack):
                    raise RuntimeError(f"the broker refused message {ack.delivery_tag}")
                if isinstance(ack, commands.Basic.Ack):
                    confirmed = ack.delivery_tag
        s.sendall(frame.marshal(commands.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 0))
        frames.expect(commands.Connection.CloseOk)

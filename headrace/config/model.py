"""The typed config model: the single source of truth for validation, schema and docs.

The top level is validated here; each plugin's own ``config:`` block (and each
operator's options) is validated by the plugin's model in ``headrace.config.load``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from headrace.config.schema_types import text_or
from headrace.contract.units import Duration, Size, parse_size

MAX_WORKERS = 1024  # one process each: far beyond any machine's cores, short of exhausting its memory
WORKERS_SCHEMA = text_or({"type": "integer", "minimum": 0, "maximum": MAX_WORKERS}, r"auto|\s*[0-9]+\s*")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsConfig(Strict):
    """Prometheus exposition and admin endpoints."""

    listen: str | None = Field("127.0.0.1:9898", description="host:port for /metrics, /health, /ready, /status, /reload; null disables")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="further names the endpoint answers to in the Host header (e.g. the DNS name Prometheus scrapes it by); "
        "always allowed: the listen address, loopback names when it is on loopback, any address and the hostname when it is "
        "0.0.0.0 or ::. Other names get 403 (DNS rebinding); \"*\" allows any. Read at start, like listen",
    )
    token: str | None = Field(None, description="a secret that POST /reload, GET /tap and POST /replay then need as "
                              "`Authorization: Bearer TOKEN` (the CLI sends $HEADRACE_TOKEN or --token-file); with one, tap and replay "
                              "also work on an endpoint that is not on loopback. Use ${VAR} to keep it out of the file. Read at start")
    token_file: str | None = Field(None, description="read the token from this file instead (relative to the config file's folder; "
                                   "e.g. a systemd credential: ${CREDENTIALS_DIRECTORY}/admin-token); surrounding whitespace is ignored")

    @model_validator(mode="after")
    def _one_token(self) -> MetricsConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if self.token is not None and len(self.token.strip()) < 16:
            raise ValueError("token: at least 16 characters (a secret that cannot be guessed)")
        return self


class ErrorBudgetConfig(Strict):
    ratio: float = Field(gt=0, le=1, description="share of an onramp's records sent to err ports, over the window, beyond which it trips")
    window: Duration = Field(60.0, gt=0, description="the sliding window; a record sent to err is acked only once this long has "
                                                      "passed without the budget tripping")
    min_events: int = Field(100, ge=1, description="records the onramp must have read in the window before the budget can trip")
    then: Literal["pause", "stop"] = Field("pause", description="pause: the onramp stops reading and is not ready (/ready 503) until "
                                                                 "the daemon restarts; stop: the daemon drains and exits 1")


class MemoryConfig(Strict):
    high: str | int = Field("80%", description="under this again, paused sources read again: a share of the limit (80%) or a size (2GiB)")
    max: str | int = Field("90%", description="over this, every source pauses and /ready answers 503: a share of the limit or a size")

    @field_validator("high", "max")
    @classmethod
    def _bound(cls, v: Any) -> Any:
        memory_bound(v, 1 << 30)  # refuses what is neither a share nor a size
        return v


def memory_bound(text: Any, limit: int) -> int:
    """``80%`` of ``limit``, or a size (``2GiB``)."""
    if isinstance(text, str) and text.strip().endswith("%"):
        share = float(text.strip()[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"{text!r}: a share between 0% and 100%")
        return int(limit * share / 100)
    return parse_size(text)


class DaemonConfig(Strict):
    """Process-wide settings."""

    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig(), description="metrics and admin endpoint")
    workers: Annotated[Literal["auto"] | int, WithJsonSchema(WORKERS_SCHEMA)] = Field(
        "auto", description="CPU worker processes; auto = usable cores; 0 runs CPU stages on the loop")
    shutdown_timeout: Duration = Field(20.0, description="drain deadline on SIGTERM before a forced exit")
    batch_size: int = Field(256, ge=1, le=65536, description="events per batch read from onramps")
    queue_events: int = Field(8192, ge=1, description="bound of every edge queue, in events")
    queue_bytes: Size = Field(16 * 2**20, ge=1, description="bound of every edge queue, in bytes")
    loop_block_threshold: Duration = Field(0.05, description="a loop stage holding the loop longer than this is reported")
    unready_after: Duration | None = Field(60.0, gt=0, description="an offramp whose writes have failed (and been retried) for this long "
                                                                   "makes /ready answer 503 until one succeeds; null: offramps never do")
    stage_timeout: Duration = Field(60.0, description="a worker stuck this long on one batch is killed and the batch retried or isolated; "
                                                      "a worker still setting up after this long makes /ready answer 503")
    start_timeout: Duration = Field(60.0, gt=0, description="how long start-up (and a reload) waits for each component to start "
                                    "(bind its port, open its file, reach its broker, set up its stages); then it fails with exit 1 "
                                    "(a reload: the running config stays)")
    state_dir: str | None = Field(None, description="folder for state kept across runs: the last-resort files of events that reach an err port "
                                  "linked nowhere (docs/delivery.md) and the checkpoints of followed files. Default: $STATE_DIRECTORY when set (systemd's StateDirectory=), else "
                                  "headrace-state beside the config file; relative to the config file's folder. Created when first needed")  # fmt: skip
    memory: MemoryConfig | None = Field(None, description="off by default: the limit is the cgroup's memory.max (systemd MemoryMax=), "
                                        "else the machine's memory; resident memory of the parent and workers is a metric either way")
    error_budget: ErrorBudgetConfig | None = Field(None, description="off by default: when more than `ratio` of an onramp's records "
                                                   "go to err ports, pause it or stop the daemon instead of dead-lettering a whole topic; "
                                                   "what went to err since the window began is not acked (a Kafka source does not commit it)")
    worker_max_rss: Size | None = Field(None, description="a worker whose resident memory grew past this size (e.g. 2GiB) after a job is "
                                                       "replaced by a fresh one, blaming no record; null: never. A worker that hit a "
                                                       "MemoryError is always replaced")
    worker_nice: int = Field(5, ge=0, le=19, description="how much lower than the daemon's the workers' scheduling priority is (added to "
                                                       "their nice value). The daemon's own process reads the sources, hands the workers "
                                                       "their jobs and delivers their answers: when it waits for a core, the workers run "
                                                       "out of jobs. 0: the same priority")
    job_transport: Literal["memory", "socket"] = Field("memory", description="how a job's records reach a worker. memory: the worker "
                                                       "copies them out of the daemon's memory (Linux's process_vm_readv; a worker the "
                                                       "kernel does not let do that says so in the log and uses the socket); socket: "
                                                       "through the worker's socket, copied by the kernel on both sides")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        # before the union, so that a wrong value gets one message rather than one per member
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_WORKERS):
            return v
        raise ValueError(f"expected auto or a number from 0 to {MAX_WORKERS}")


class ProcessorRef(Strict):
    """A pre- or postprocessor with options, e.g. ``{name: lines, max_line_bytes: 65536}``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


class BufferConfig(Strict):
    type: Literal["memory", "disk"] = Field("memory", description="memory: queues only (daemon.queue_events/queue_bytes); disk: a "
                                                                  "write-ahead log under daemon.state_dir (docs/delivery.md)")
    max_bytes: Size = Field(1 << 30, ge=1 << 16, description="disk: the most its segment files may hold (e.g. 1GiB)")
    when_full: Literal["block", "drop_newest"] = Field("block", description="disk, when max_bytes is reached: block (what feeds it "
                                                                            "waits: backpressure) or drop_newest (new events are dropped "
                                                                            "and counted; the other branches of a fan-out go on)")
    sync_interval: Duration = Field(0.1, gt=0, description="disk: how often appended events are fsynced (an onramp's: at once "
                                                           "when a source waits for it); upstream they count as done once synced")


class OnrampConfig(Strict):
    type: str = Field(description="onramp plugin name (see `headrace plugins`)")
    codec: str | ProcessorRef = Field("json", description="how records are decoded: a name, or {name: csv, delimiter: ';', ...}")
    preprocessors: list[str | ProcessorRef] | None = Field(None, description="framing/decompression; default depends on the onramp")
    config: dict[str, Any] = Field(default_factory=dict, description="plugin-specific settings")
    ordered: bool = Field(True, description="keep order per partition/key across workers")
    buffer: BufferConfig = Field(default_factory=lambda: BufferConfig(), description="disk: records are written to a write-ahead log "
                                 "right after framing and count as read (the source's ack: an HTTP answer, a commit) once fsynced; "
                                 "memory (default): they go straight into the graph")


class RetryConfig(Strict):
    max_attempts: int | None = Field(None, ge=1, description="writes of a batch before its records go to the offramp's err port (none: no limit)")
    max_elapsed: Duration | None = Field(None, gt=0, description="time from a batch's first failed write after which its records go to err "
                                                                   "(checked after each failed write; none: no limit)")
    max_backoff: Duration = Field(30.0, gt=0, description="longest wait between two writes of a failing batch (the wait starts at 0.1 s "
                                  "and doubles; a shorter cap finds a recovered peer sooner, at the cost of more attempts while it is down)")


class OfframpConfig(Strict):
    type: str = Field(description="offramp plugin name (see `headrace plugins`)")
    codec: str | ProcessorRef = Field("json", description="how events are encoded: a name, or {name: csv, header: [...], ...}")
    postprocessors: list[str | ProcessorRef] | None = Field(None, description="framing/compression; default depends on the offramp")
    config: dict[str, Any] = Field(default_factory=dict, description="plugin-specific settings")
    with_meta: bool = Field(False, description="write each event as {event, meta} (meta holds the error of err-port events)")
    buffer: BufferConfig = Field(default_factory=lambda: BufferConfig(), description="what holds events between the offramp's queue and "
                                 "its sink: memory (default) or a disk buffer")
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig(), description="bounds on retrying a failed write; default: retry "
                                                                                   "with backoff until it succeeds")


class Config(Strict):
    version: Literal[1] = 1
    daemon: DaemonConfig = Field(default_factory=lambda: DaemonConfig())
    onramps: dict[str, OnrampConfig] = Field(default_factory=dict)
    pipelines: dict[str, Any] = Field(default_factory=dict)
    offramps: dict[str, OfframpConfig] = Field(default_factory=dict)
    links: dict[str, list[str] | str] = Field(default_factory=dict)
    tests: list[dict[str, Any]] = Field(default_factory=list, description="unit tests run by `headrace test`")

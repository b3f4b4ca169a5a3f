"""``headrace_worker_occupied_ratio``: the wall time a worker had a job in hand, beside the CPU
time of ``headrace_worker_busy_ratio``. A stage that waits (``time.sleep``) keeps its worker
occupied without using a core: the two ratios must tell that apart."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import Daemon, free_port, lines_written, scrape

STAGES = '''
import time

def wait(event, meta):
    end = time.process_time() + 0.0002  # a little CPU, so jobs stay small (their size follows CPU per event)
    while time.process_time() < end:
        pass
    time.sleep(0.0012)  # then wall time without a core
    return event
'''


def _ratios(series: dict[str, float], name: str) -> dict[str, float]:
    return {k.split('worker="')[1].split('"')[0]: v for k, v in series.items() if k.startswith(name + "{")}


def test_a_waiting_stage_keeps_workers_occupied_not_busy(tmp_path: Path) -> None:
    n = 6000  # ~1.4 ms each on 2 workers: ~4 s of steady work, several one-second samples
    (tmp_path / "stages.py").write_text(STAGES)
    (tmp_path / "in.ndjson").write_text("".join(f'{{"id": {i}}}\n' for i in range(n)))
    port = free_port()
    cfg = tmp_path / "occupied.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:wait"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    seen: list[tuple[dict[str, float], dict[str, float]]] = []

    def sampled() -> bool:
        try:
            series = scrape(port)
        except OSError:
            return False
        occupied = _ratios(series, "headrace_worker_occupied_ratio")
        busy = _ratios(series, "headrace_worker_busy_ratio")
        if len(occupied) == 2 and len(busy) == 2:
            seen.append((occupied, busy))
        done = lines_written(tmp_path / "out.ndjson") >= n
        # both workers occupied nearly all the second, at a fraction of a core each
        return done or any(min(o.values()) >= 0.8 and max(b.values()) <= 0.5 for o, b in seen)

    try:
        d.wait_for(sampled, timeout=60, interval=0.2)
        assert any(min(o.values()) >= 0.8 and max(b.values()) <= 0.5 for o, b in seen), seen[-10:]
        # the counters behind them: every job's wall and CPU time, summed (what a dashboard rates over any interval)
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n, timeout=60, interval=0.1)
        series = scrape(port)
        occupied = sum(_ratios(series, "headrace_worker_occupied_seconds_total").values())
        busy = sum(_ratios(series, "headrace_worker_busy_seconds_total").values())
        assert occupied >= n * 0.0014  # each event: 0.2 ms on a core, then 1.2 ms asleep
        assert n * 0.0002 <= busy < occupied / 2
    finally:
        d.stop()

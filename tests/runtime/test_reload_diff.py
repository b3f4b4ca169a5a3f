"""The engine's reload diff: which components a new config keeps running, changes, adds or removes.
Mostly pure logic: two configs are loaded and compared by their signatures, nothing runs (the
last test runs an engine in this process through reloads)."""

from __future__ import annotations

from pathlib import Path

from headrace.config.graph import Graph
from headrace.config.load import load_text
from headrace.metrics.defs import Metrics
from headrace.runtime.engine import Engine, ReloadDiff, component_signature
from headrace.runtime.loopguard import LoopGuard

BASE = """
version: 1
daemon: {batch_size: 256}
onramps:
  src: {type: tcp, codec: json, config: {port: 9000}}
  side: {type: udp, config: {port: 9001}}
pipelines:
  main: [{op: python, fn: "diffstages:tag"}, {op: filter, where: "event['x'] > 1"}]
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, config: {path: dlq.ndjson}}
links: {src: [main], side: [main], main: [out], main/err: [dlq]}
"""


def graph(tmp_path: Path, text: str = BASE) -> Graph:
    """The config, its stage module named after the test's folder: modules stay imported across tests."""
    module = f"diffstages_{tmp_path.name}".replace("-", "_")
    if not (tmp_path / f"{module}.py").exists():
        (tmp_path / f"{module}.py").write_text("def tag(event, meta):\n    return event\n")
    return load_text(text.replace("diffstages:", f"{module}:"), tmp_path / "c.yaml")


def engine_running(g: Graph) -> Engine:
    """An engine that has ``g`` in effect, as far as the diff can tell (its signatures, taken as ``start`` takes them)."""
    engine = Engine(g, Metrics(), LoopGuard(1.0), lambda: None)
    engine.signatures = {cid: component_signature(c) for cid, c in g.components.items()}
    return engine


def diff(tmp_path: Path, new: str, old: str = BASE) -> dict[str, list[str]]:
    d: ReloadDiff = engine_running(graph(tmp_path, old)).diff(graph(tmp_path, new))
    return {k: sorted(v) for k, v in d.as_dict().items() if v}


ALL = ["dlq", "main.filter", "main.tag", "out", "side", "src"]


def test_the_same_config_keeps_everything(tmp_path: Path) -> None:
    assert diff(tmp_path, BASE) == {"unchanged": ALL}


def test_a_changed_option_changes_only_its_component(tmp_path: Path) -> None:
    assert diff(tmp_path, BASE.replace("out.ndjson", "new.ndjson")) == {"changed": ["out"], "unchanged": sorted(set(ALL) - {"out"})}
    got = diff(tmp_path, BASE.replace("event['x'] > 1", "event['x'] > 2"))
    assert got == {"changed": ["main.filter"], "unchanged": sorted(set(ALL) - {"main.filter"})}


def test_codec_and_processors_are_part_of_a_component(tmp_path: Path) -> None:
    assert diff(tmp_path, BASE.replace("codec: json, config: {port: 9000}", "codec: string, config: {port: 9000}"))["changed"] == ["src"]
    got = diff(tmp_path, BASE.replace("{type: udp, config", "{type: udp, preprocessors: [lines], config"))
    assert got["changed"] == ["side"]
    got = diff(tmp_path, BASE.replace("dlq: {type: file, config", "dlq: {type: file, postprocessors: [gzip], config"))
    assert got["changed"] == ["dlq"]


def test_links_are_not_part_of_a_component(tmp_path: Path) -> None:
    """A new link re-routes running components: none of them restarts for it."""
    got = diff(tmp_path, BASE.replace("main/err: [dlq]", "main/err: [dlq, out]"))
    assert got == {"unchanged": ALL}


def test_added_and_removed_components(tmp_path: Path) -> None:
    new = BASE.replace("  side: {type: udp, config: {port: 9001}}\n", "").replace("side: [main], ", "")
    new = new.replace("{op: filter, where: \"event['x'] > 1\"}]", "{op: filter, where: \"event['x'] > 1\"}, {op: set, set: {y: '1'}}]")
    got = diff(tmp_path, new)
    assert got["removed"] == ["side"] and got["added"] == ["main.set"] and "changed" not in got


def test_a_stage_inserted_in_front_renames_nothing(tmp_path: Path) -> None:
    """Nodes of a list pipeline are named after their function or op: inserting a stage adds it and
    restarts nothing else."""
    got = diff(tmp_path, BASE.replace("main: [{op: python", "main: [{op: set, set: {y: '1'}}, {op: python"))
    assert got == {"added": ["main.set"], "unchanged": ALL}


def test_a_python_stage_changes_with_its_module_source(tmp_path: Path) -> None:
    old = engine_running(graph(tmp_path))
    (module,) = tmp_path.glob("diffstages_*.py")
    module.write_text("def tag(event, meta):\n    event['tagged'] = True\n    return event\n")
    d = old.diff(graph(tmp_path))
    assert d.changed == ["main.tag"], "the same config, a new module: the stage must be restarted to load it"
    assert sorted(d.unchanged) == sorted(set(ALL) - {"main.tag"})


def test_daemon_settings_are_not_part_of_any_component(tmp_path: Path) -> None:
    """``daemon:`` is not in any signature: a reload that only changes batch_size or the queue sizes restarts
    no component. (Kept components keep the batch size and queue bounds they were built with: the reload's
    answer names these settings in restart_required, tests/daemon/test_reload.py.)"""
    assert diff(tmp_path, BASE.replace("batch_size: 256", "batch_size: 64, queue_events: 100")) == {"unchanged": ALL}


def test_reloads_that_change_a_codecs_options_do_not_pile_up_codec_instances(tmp_path: Path) -> None:
    """A codec's options are part of its key, so each such reload makes a new instance; the engine
    forgets the ones the running graph no longer names (it kept every one for its life)."""
    import asyncio

    text = """
version: 1
onramps: {src: {type: file, codec: {name: csv, delimiter: "DELIM", header: [a, b]}, config: {path: in.csv, follow: true}}}
pipelines: {main: [{op: python, fn: "diffstages:tag"}]}
offramps: {out: {type: file, codec: json, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
"""
    (tmp_path / "in.csv").write_text("")

    async def main() -> None:
        engine = Engine(graph(tmp_path, text.replace("DELIM", ";")), Metrics(), LoopGuard(1.0), lambda: None)
        await engine.start(timeout=10)
        try:
            first = set(engine.codecs)
            for delim in ["|", ",", "\\t", ":", ";", "|"]:
                await engine.reload(graph(tmp_path, text.replace("DELIM", delim)), timeout=10)
            csv_keys = [k for k in engine.codecs if k.startswith("csv")]
            assert len(csv_keys) == 1, csv_keys
            assert len(engine.codecs) <= len(first), (sorted(first), sorted(engine.codecs))
        finally:
            engine.stop_intake()
            await asyncio.wait_for(engine.wait(), 10)

    asyncio.run(main())

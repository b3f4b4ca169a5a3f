"""Valid configs and the graph they resolve to: pipeline ports are flattened into direct edges."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.config.graph import Edge
from headrace.config.load import load_file
from headrace.contract.context import PluginContext
from headrace.plugins.offramps.file import FileOfframp
from headrace.plugins.onramps.file import FileOnramp
from tests.support.imports import restored_imports


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    with restored_imports():
        yield


VALID = [
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: filter, where: "event['level'] != 'debug'"}
    - {op: set, set: {seen: 'True'}}
offramps: {out: {type: stdout}, dlq: {type: stderr}}
links: {src: [main], main: [out], main/err: [dlq]}
""",
        {
            ("src", "out"): ["main.filter"],
            ("main.filter", "out"): ["main.set"],
            ("main.filter", "err"): ["dlq"],
            ("main.set", "out"): ["out"],
            ("main.set", "err"): ["dlq"],
        },
        [("src", "err"), ("out", "err"), ("dlq", "err")],
        id="linear",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  limited:
    nodes:
      classify: {op: set, set: {meta.class: "event.get('kind', 'other')", meta.rate: '10'}}
      limit: {op: bucket}
      split: {op: route, routes: {errors: "meta['class'] == 'error'"}}
    links:
      in: [classify]
      classify: [limit]
      limit: [split]
      limit/overflow: [err]
      split/errors: [out]
      split/default: [out]
offramps: {out: {type: stdout}, dropped: {type: blackhole}}
links: {src: [limited], limited: [out], limited/err: [dropped]}
""",
        {
            ("src", "out"): ["limited.classify"],
            ("limited.classify", "out"): ["limited.limit"],
            ("limited.classify", "err"): ["dropped"],
            ("limited.limit", "out"): ["limited.split"],
            ("limited.limit", "overflow"): ["dropped"],
            ("limited.limit", "err"): ["dropped"],
            ("limited.split", "errors"): ["out"],
            ("limited.split", "default"): ["out"],
            ("limited.split", "err"): ["dropped"],
        },
        [("src", "err"), ("limited.split", "out"), ("out", "err"), ("dropped", "err")],
        id="graph_with_ports",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: route
      routes: {alerts: "event['level'] == 'error'"}
offramps:
  console: {type: stdout}
  archive: {type: file, config: {path: archive.ndjson}}
  pager: {type: stderr}
links:
  src: [main]
  main/alerts: [archive, pager]
  main/default: [console]
""",
        {
            ("src", "out"): ["main.route"],
            ("main.route", "alerts"): ["archive", "pager"],
            ("main.route", "default"): ["console"],
        },
        [("src", "err"), ("main.route", "err"), ("main.route", "out"), ("console", "err"), ("archive", "err"), ("pager", "err")],
        id="fan_out_one_port_to_two_offramps",
    ),
    pytest.param(
        """\
version: 1
onramps:
  a: {type: stdin}
  b: {type: metronome}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {a: [main], b: main, main: [out]}
""",
        {
            ("a", "out"): ["main.filter"],
            ("b", "out"): ["main.filter"],
            ("main.filter", "out"): ["out"],
        },
        [("a", "err"), ("b", "err"), ("main.filter", "err"), ("out", "err")],
        id="fan_in_two_onramps",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  first: [{op: filter, where: 'True'}]
  second: [{op: set, set: {x: '1'}}, {op: filter, where: "event['x'] == 1"}]
  empty: []
offramps: {out: {type: stdout}}
links:
  src: [first]
  first: [empty]
  empty: [second/in]
  second: [out]
""",
        {
            ("src", "out"): ["first.filter"],
            ("first.filter", "out"): ["second.set"],
            ("second.set", "out"): ["second.filter"],
            ("second.filter", "out"): ["out"],
        },
        [("src", "err"), ("first.filter", "err"), ("second.set", "err"), ("second.filter", "err"), ("out", "err")],
        id="pipeline_to_pipeline",
    ),
]


@pytest.mark.parametrize(("text", "edges", "unlinked"), VALID)
def test_valid_config_resolves_to_edges(tmp_path: Path, text: str, edges: dict[Edge, list[str]], unlinked: list[Edge]) -> None:
    path = tmp_path / "headrace.yaml"
    path.write_text(text)
    graph = load_file(path, env={})
    assert graph.edges == edges
    assert sorted(graph.unlinked) == sorted(unlinked)
    # components are in topological order: every edge goes forward
    order = list(graph.components)
    for (src, _), targets in graph.edges.items():
        assert all(order.index(src) < order.index(t) for t in targets), (src, targets, order)


ENV_CONFIG = """\
version: 1
daemon: {workers: "${HR_WORKERS:-0}", batch_size: "${HR_BATCH:-64}", metrics: {listen: "127.0.0.1:${HR_PORT:-9898}"}}
onramps:
  src: {type: file, codec: "${HR_CODEC:-json}", config: {path: "${HR_DIR}/in.ndjson", follow: "${HR_FOLLOW:-false}"}}
pipelines: {main: [{op: filter, where: "event['x'] == '${HR_X:-none}'"}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
"""


def test_env_interpolation_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HR_WORKERS", "HR_BATCH", "HR_PORT", "HR_CODEC", "HR_FOLLOW", "HR_X"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HR_DIR", "data")
    path = tmp_path / "headrace.yaml"
    path.write_text(ENV_CONFIG)
    graph = load_file(path)  # from os.environ
    assert (graph.daemon.workers, graph.daemon.batch_size, graph.daemon.metrics.listen) == (0, 64, "127.0.0.1:9898")
    src = graph.components["src"]
    assert (src.codec, src.config.path, src.config.follow) == ("json", "data/in.ndjson", False)
    assert graph.components["main.filter"].config.where == "event['x'] == 'none'"


def test_env_interpolation_set_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "HR_WORKERS": "3",
        "HR_BATCH": "500",
        "HR_PORT": "19898",
        "HR_CODEC": "string",
        "HR_DIR": "/srv/in",
        "HR_FOLLOW": "true",
        "HR_X": "y",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "headrace.yaml"
    path.write_text(ENV_CONFIG)
    graph = load_file(path)
    assert (graph.daemon.workers, graph.daemon.batch_size, graph.daemon.metrics.listen) == (3, 500, "127.0.0.1:19898")
    src = graph.components["src"]
    assert (src.codec, src.config.path, src.config.follow) == ("string", "/srv/in/in.ndjson", True)
    assert graph.components["main.filter"].config.where == "event['x'] == 'y'"
    # an explicit env mapping replaces os.environ; an empty value takes the default
    graph = load_file(path, env={"HR_DIR": "d", "HR_CODEC": ""})
    assert (graph.components["src"].codec, graph.components["src"].config.path, graph.daemon.workers) == ("json", "d/in.ndjson", 0)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc" / "headrace"
    (conf / "data").mkdir(parents=True)
    (conf / "hr_relpath_stage.py").write_text("def tag(event, meta):\n    return event\n")
    (conf / "headrace.yaml").write_text("""\
version: 1
onramps: {src: {type: file, config: {path: data/in.ndjson}}}
pipelines: {main: [{op: python, fn: "hr_relpath_stage:tag"}]}
offramps: {out: {type: file, config: {path: out/result.ndjson}}}
links: {src: [main], main: [out]}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the working directory nor sys.path knows the config folder
    graph = load_file(Path("..") / "etc" / "headrace" / "headrace.yaml", env={})
    assert graph.base_dir == conf
    assert graph.file == conf / "headrace.yaml"
    assert graph.edges == {("src", "out"): ["main.tag"], ("main.tag", "out"): ["out"]}
    onramp = FileOnramp(graph.components["src"].config, PluginContext("src", graph.base_dir))
    assert onramp.path == str(conf / "data" / "in.ndjson")
    offramp = FileOfframp(graph.components["out"].config, PluginContext("out", graph.base_dir))
    assert offramp.path == conf / "out" / "result.ndjson"
    assert sys.modules["hr_relpath_stage"].__file__ == str(conf / "hr_relpath_stage.py")
    assert not (conf / "out").exists()  # loading touches no output file

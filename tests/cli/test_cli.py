"""The ``headrace`` verbs check, graph, schema, plugins and --version, through the real command."""

from __future__ import annotations

import json
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from headrace import __version__
from tests.config.test_valid import VALID
from tests.support.daemon import headrace

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}  # importing the example's stages must not write into the repository

SMALL = """\
version: 1
onramps:
  in: {type: stdin}
pipelines:
  main:
    - {op: filter, where: "event['ok']"}
    - op: route
      routes: {alerts: "event['level'] == 'error'"}
offramps:
  console: {type: stdout}
  alerts: {type: file, config: {path: alerts.ndjson}}
links:
  in: [main]
  main/alerts: [alerts]
  main/default: [console]
  main/err: [console]
"""


# -- check -----------------------------------------------------------------------------------------


def test_check_quickstart_is_ok(tmp_path: Path) -> None:
    r = headrace("check", str(QUICKSTART), cwd=tmp_path, env=NO_PYC)  # another working directory on purpose
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith(f"{QUICKSTART}: ok (1 onramps, ")


def test_check_bad_config_exits_78_with_positions_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("""\
version: 1
daemon: {workers: many}
onramps:
  src: {type: stdin, cdec: json}
""")
    r = headrace("check", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stdout == b""
    assert r.stderr.decode().splitlines() == [  # the file named as given, not resolved
        "bad.yaml:2:19: daemon.workers: expected auto or a number from 0 to 1024",
        "bad.yaml:4:22: unknown key 'cdec' in onramps.src: did you mean 'codec'? (expected one of: buffer, codec, config, ordered, preprocessors, type)",
    ]


def test_check_missing_config_exits_78(tmp_path: Path) -> None:
    r = headrace("check", "absent.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stderr.decode().startswith("absent.yaml:1:1: cannot read config: ")


def test_check_touches_no_file_or_socket_used_at_run_time(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "c.yaml").write_text(f"""\
version: 1
daemon: {{metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, config: {{path: does/not/exist.ndjson}}}}}}
pipelines: {{main: [{{op: filter, where: 'True'}}]}}
offramps: {{out: {{type: file, config: {{path: out/result.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
        r = headrace("check", "c.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "c.yaml: ok (1 onramps, 1 nodes, 1 offramps)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no output file or folder was created


# -- graph -----------------------------------------------------------------------------------------

DOT = """\
digraph headrace {
  rankdir=LR;
  node [fontname="Helvetica"];
  "in" [label="in\\n(stdin)", shape=cds];
  "alerts" [label="alerts\\n(file)", shape=box3d];
  "console" [label="console\\n(stdout)", shape=box3d];
  subgraph "cluster_main" {
    label="pipeline main";
    "main.filter" [label="filter\\n[filter]", shape=box, style=rounded];
    "main.route" [label="route\\n[route]", shape=box, style=rounded];
  }
  "in" -> "main.filter";
  "main.filter" -> "console" [label="err", color=red, style=dashed];
  "main.filter" -> "main.route";
  "main.route" -> "console" [label="err", color=red, style=dashed];
  "main.route" -> "alerts" [label="alerts"];
  "main.route" -> "console" [label="default"];
}
"""

MERMAID = """\
flowchart LR
  n0[/"in<br/>(stdin)"/]
  n3[["alerts<br/>(file)"]]
  n4[["console<br/>(stdout)"]]
  subgraph main["pipeline main"]
    n1("filter<br/>[filter]")
    n2("route<br/>[route]")
  end
  n0 --> n1
  n1 -.->|err| n4
  n1 --> n2
  n2 -.->|err| n4
  n2 -->|alerts| n3
  n2 -->|default| n4
"""


@pytest.mark.parametrize(("args", "expected"), [((), DOT), (("--format", "dot"), DOT), (("--format", "mermaid"), MERMAID)])
def test_graph(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    (tmp_path / "small.yaml").write_text(SMALL)
    r = headrace("graph", "small.yaml", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == expected


def test_graph_of_a_bad_config_exits_78(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(SMALL.replace("main/default: [console]", "main/default: [consle]"))
    r = headrace("graph", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stdout == b""
    assert r.stderr.decode() == "bad.yaml:15:18: link to unknown component 'consle': did you mean 'console'?\n"


# -- schema ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    r = headrace("schema")
    assert r.returncode == 0, r.stderr.decode()
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == {"version", "daemon", "onramps", "pipelines", "offramps", "links", "tests"}


def test_schema_accepts_the_quickstart_and_the_valid_corpus(schema: dict[str, Any]) -> None:
    configs = [yaml.safe_load(QUICKSTART.read_text())] + [yaml.safe_load(p.values[0]) for p in VALID]
    for cfg in configs:
        errors = [e.message for e in validator(schema).iter_errors(cfg)]
        assert errors == [], cfg


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("top level", lambda c: c.update(onramp={})),
        ("daemon", lambda c: c["daemon"].update(worker=2)),
        ("onramp", lambda c: c["onramps"]["logs"].update(cdec="json")),
        ("onramp plugin config", lambda c: c["onramps"]["logs"]["config"].update(pth="x")),
        ("offramp plugin config", lambda c: c["offramps"]["errors"]["config"].update(mod="append")),
        ("operator option", lambda c: c["pipelines"]["main"][1].update(wehre="True")),
        ("unknown onramp type", lambda c: c["onramps"]["logs"].update(type="fiel")),
        ("unknown operator", lambda c: c["pipelines"]["main"].append({"op": "filtr"})),
        ("wrong type", lambda c: c["daemon"].update(workers="many")),
    ],
)
def test_schema_rejects(schema: dict[str, Any], where: str, change: Any) -> None:
    cfg = yaml.safe_load(QUICKSTART.read_text())
    change(cfg)
    assert not validator(schema).is_valid(cfg), where


# -- plugins and --version -------------------------------------------------------------------------

BUILT_IN = {
    "onramps": ["file", "stdin", "metronome", "blaster"],
    "offramps": ["stdout", "file", "blackhole"],
    "codecs": ["json", "string", "binary"],
    "operators": ["python", "filter", "route", "set", "bucket"],
}


def test_plugins_lists_every_built_in() -> None:
    r = headrace("plugins")
    assert r.returncode == 0, r.stderr.decode()
    listed: dict[str, dict[str, str]] = {}
    kind = ""
    for line in r.stdout.decode().splitlines():
        if not line.startswith(" "):
            kind = line.rstrip(":")
            listed[kind] = {}
        else:
            name, _, rest = line.strip().partition(" ")
            listed[kind][name] = rest.strip()
    assert {"onramps", "offramps", "codecs", "preprocessors", "postprocessors", "operators"} <= set(listed)
    for kind, names in BUILT_IN.items():
        for name in names:
            assert name in listed[kind], (kind, name)
            summary = listed[kind][name]
            assert summary.endswith("[built-in]"), (kind, name, summary)
            assert "cannot load" not in summary and len(summary) > len("[built-in]"), (kind, name, summary)


def test_version() -> None:
    r = headrace("--version")
    assert r.returncode == 0
    assert r.stdout.decode() == f"headrace {__version__} (Python {platform.python_version()}, {platform.python_implementation()}, {sys.platform})\n"


def test_no_verb_is_a_usage_error() -> None:
    r = headrace()
    assert r.returncode == 2
    assert b"usage: headrace" in r.stderr

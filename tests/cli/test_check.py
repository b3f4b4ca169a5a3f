"""``headrace check`` as Vector, Benthos and Tremor users expect it, through the real command:
several files and globs, warnings with positions, --deny-warnings, --format json, --env-file,
--unit (the variables systemd gives the service), messages in file order with the path as given."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.daemon import headrace

ROOT = Path(__file__).resolve().parents[2]

OK = """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: "True"}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
"""

UNLINKED_ROUTE_PORT = """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: filter, where: "True"}
    - op: route
      routes: {alerts: "event['level'] == 'error'"}
offramps: {out: {type: stdout}}
links: {src: [main], main/default: [out]}
"""

BAD = """\
version: 1
pipelines:
  main:
    - {op: filter, where: "True", wehre: "False"}
onramps:
  src: {type: stdn}
offramps: {out: {type: stdout}}
links: {src: [main], main: [otu]}
"""  # pipelines first: found after the onramps, reported before them


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_several_files_and_globs(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", OK)
    write(tmp_path, "conf.d/b.yaml", OK)
    write(tmp_path, "conf.d/deep/c.yaml", OK)
    write(tmp_path, "conf.d/b_test.yaml", "tests: []\n")  # tests of b.yaml, not a config: a glob leaves it out
    write(tmp_path, "bad.yaml", BAD)
    r = headrace("check", "a.yaml", "conf.d/**/*.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == [
        "a.yaml: ok (1 onramps, 1 nodes, 1 offramps)",
        "conf.d/b.yaml: ok (1 onramps, 1 nodes, 1 offramps)",
        "conf.d/deep/c.yaml: ok (1 onramps, 1 nodes, 1 offramps)",
    ]
    r = headrace("check", "*.yaml", "nowhere/*.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stdout.decode() == "a.yaml: ok (1 onramps, 1 nodes, 1 offramps)\n"  # the valid one is still checked and reported
    err = r.stderr.decode().splitlines()
    assert err[0].startswith("bad.yaml:4:35: unknown key 'wehre'")
    assert err[-1] == "nowhere/*.yaml:1:1: no file matches this pattern"


def test_errors_in_file_order_with_the_path_as_given(tmp_path: Path) -> None:
    write(tmp_path, "etc/headrace.yaml", BAD)
    r = headrace("check", "etc/../etc/headrace.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stderr.decode().splitlines() == [
        "etc/../etc/headrace.yaml:4:35: unknown key 'wehre' in operator 'filter' of node 'main.filter': did you mean 'where'? "
        "(expected one of: id, op, where)",
        "etc/../etc/headrace.yaml:6:15: unknown onramp 'stdn': did you mean 'stdin'? "
        "(known: amqp, blaster, file, http, kafka, metronome, mqtt, nats, otlp, redis, stdin, tcp, udp, unix)",
        "etc/../etc/headrace.yaml:8:29: link to unknown component 'otu': did you mean 'out'?",
    ]  # found by different passes (plugins, their settings, links), printed in the order of the file


def test_warnings_have_positions_and_deny_warnings_refuses_them(tmp_path: Path) -> None:
    write(tmp_path, "w.yaml", UNLINKED_ROUTE_PORT)
    r = headrace("check", "w.yaml", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.decode() == "w.yaml:6:7: warning: port main/alerts is not linked: its events will be counted and dropped\n"
    assert r.stdout.decode() == "w.yaml: ok (1 onramps, 2 nodes, 1 offramps, 1 warning(s))\n"
    r = headrace("check", "--deny-warnings", "w.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stdout == b""
    assert r.stderr.decode().splitlines()[-1] == "w.yaml: 1 warning(s), refused by --deny-warnings"


def test_json_format(tmp_path: Path) -> None:
    write(tmp_path, "w.yaml", UNLINKED_ROUTE_PORT)
    write(tmp_path, "bad.yaml", BAD)
    r = headrace("check", "--format", "json", "w.yaml", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 78
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["errors"] == [] and doc["warnings"] == []
    w, bad = doc["files"]
    assert w == {"file": "w.yaml", "ok": True, "onramps": 1, "nodes": 2, "offramps": 1, "errors": [],
                 "warnings": [{"file": "w.yaml", "line": 6, "column": 7,
                               "message": "port main/alerts is not linked: its events will be counted and dropped"}]}  # fmt: skip
    assert bad["file"] == "bad.yaml" and bad["ok"] is False and bad["warnings"] == []
    assert [(e["line"], e["column"]) for e in bad["errors"]] == [(4, 35), (6, 15), (8, 29)]
    r = headrace("check", "--format", "json", "--deny-warnings", "w.yaml", cwd=tmp_path)
    assert r.returncode == 78 and json.loads(r.stdout)["files"][0]["ok"] is False


ENV_CONFIG = """\
version: 1
daemon: {batch_size: "${BATCH}"}
onramps: {src: {type: stdin}}
offramps: {dlq: {type: file, config: {path: "${OUT_DIR}/dlq.ndjson"}}}
links: {src: [dlq]}
"""


def test_env_file(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", ENV_CONFIG)
    write(tmp_path, "vars.env", '# comment\nBATCH="64"\n\nOUT_DIR=out\n')
    r = headrace("check", "c.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert "c.yaml:2:22: environment variable BATCH is not set" in r.stderr.decode()
    r = headrace("check", "--env-file", "vars.env", "c.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    r = headrace("check", "--env-file", "missing.env", "c.yaml", cwd=tmp_path)
    assert r.returncode == 78
    assert r.stderr.decode().startswith("missing.env:1:1: cannot read environment file missing.env: ")


# docs/operations.md, "Writable paths": a dead-letter file under the state directory systemd makes
SERVICE_CONFIG = """\
version: 1
onramps:
  orders: {type: kafka, config: {brokers: "${KAFKA_BROKERS}", topics: [orders], group_id: g, client: {sasl_plain_password: "${KAFKA_PASSWORD}"}}}
offramps:
  deadletter:
    type: file
    codec: json
    postprocessors: [lines]
    config: {path: "${STATE_DIRECTORY}/dlq.ndjson"}
links: {orders: [deadletter]}
"""


def test_unit_gives_the_services_environment(tmp_path: Path) -> None:
    """Following docs/operations.md, `check` failed from a shell on ${STATE_DIRECTORY}; --unit reads what systemd would set."""
    write(tmp_path, "headrace.yaml", SERVICE_CONFIG)
    secrets = write(tmp_path, "headrace.env", "KAFKA_PASSWORD=s3cret\n")
    unit = (ROOT / "systemd" / "headrace.service").read_text().replace("-/etc/headrace/headrace.env", f"-{secrets}")
    write(tmp_path, "headrace.service", unit)
    write(tmp_path, "headrace.service.d/brokers.conf", '[Service]\nEnvironment="KAFKA_BROKERS=k1:9092,k2:9092"\n')
    if not {"STATE_DIRECTORY", "KAFKA_BROKERS", "KAFKA_PASSWORD"} & set(os.environ):  # as from a login shell
        r = headrace("check", "headrace.yaml", cwd=tmp_path)
        assert r.returncode == 78
        assert "headrace.yaml:9:20: environment variable STATE_DIRECTORY is not set" in r.stderr.decode()
    r = headrace("check", "--unit", "headrace.service", "headrace.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "headrace.yaml: ok (1 onramps, 0 nodes, 1 offramps)\n"
    # the shell's variables are not the service's: only what the unit gives counts
    write(tmp_path, "headrace.service.d/brokers.conf", "[Service]\n")
    r = headrace("check", "--unit", "headrace.service", "headrace.yaml", cwd=tmp_path, env={"KAFKA_BROKERS": "from-the-shell:9092"})
    assert r.returncode == 78
    assert r.stderr.decode().startswith("headrace.yaml:3:43: environment variable KAFKA_BROKERS is not set")


def test_unquoted_reference_in_a_flow_mapping_gets_a_hint(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", SERVICE_CONFIG.replace('{path: "${STATE_DIRECTORY}/dlq.ndjson"}', "{path: ${STATE_DIRECTORY}/dlq.ndjson}"))
    r = headrace("check", "c.yaml", cwd=tmp_path, env={"STATE_DIRECTORY": "/var/lib/headrace"})
    assert r.returncode == 78
    assert r.stderr.decode() == ('c.yaml:9:21: ${STATE_DIRECTORY}/dlq.ndjson must be quoted inside {...} or [...] (a flow collection, '
                                 'where { and } are YAML syntax): write "${STATE_DIRECTORY}/dlq.ndjson"\n')  # fmt: skip


def test_run_logs_the_warnings_check_prints(tmp_path: Path) -> None:
    """``run`` says what ``check`` warns about (was: silent, so a journal never showed that a port drops events)."""
    write(tmp_path, "w.yaml", UNLINKED_ROUTE_PORT)
    r = headrace("run", "w.yaml", cwd=tmp_path, input=b"")
    assert r.returncode == 0, r.stderr
    assert "w.yaml:6:7: warning: port main/alerts is not linked: its events will be counted and dropped" in r.stderr.decode()

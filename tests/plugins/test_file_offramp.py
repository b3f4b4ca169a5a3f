"""The file offramp: path templates confined to a root, rotation, refusals to err."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon

STAGE = '''
def route(event, meta):
    meta["dir"] = event["dir"]
    return event
'''


def run(tmp_path: Path, write: Any, records: list[dict[str, Any]], file_config: str) -> Daemon:
    write("stage.py", STAGE)
    write("in.ndjson", "".join(json.dumps(r) + "\n" for r in records))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}, batch_size: 10}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: python, fn: "stage:route"}}]}}
offramps:
  out: {{type: file, config: {file_config}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], main: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    return d


def dlq(tmp_path: Path) -> dict[int, str]:
    p = tmp_path / "dlq.ndjson"
    return {json.loads(x)["event"]["id"]: json.loads(x)["meta"]["error"]["message"] for x in p.read_text().splitlines()} if p.exists() else {}


def test_template_writes_per_meta_value_inside_root(tmp_path: Path, write: Any) -> None:
    recs = [{"id": i, "dir": ["a", "b"][i % 2]} for i in range(10)]
    run(tmp_path, write, recs, '{path: "out/{meta.dir}/events.ndjson", root: out}')
    for name, ids in (("a", [0, 2, 4, 6, 8]), ("b", [1, 3, 5, 7, 9])):
        got = [json.loads(x)["id"] for x in (tmp_path / "out" / name / "events.ndjson").read_text().splitlines()]
        assert got == ids
    assert dlq(tmp_path) == {}


def test_nothing_written_outside_root(tmp_path: Path, write: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(outside, tmp_path / "out" / "evil")  # a planted symlink inside the root, pointing out
    bad = {1: "..", 2: "../outside", 3: "/etc", 4: "a\u0000b", 5: "evil", 6: "~root", 7: "."}
    recs = [{"id": 0, "dir": "ok"}, *({"id": i, "dir": v} for i, v in bad.items()), {"id": 8, "dir": "ok"}]
    run(tmp_path, write, recs, '{path: "out/{meta.dir}/x.ndjson", root: out}')
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "ok" / "x.ndjson").read_text().splitlines()] == [0, 8]
    refused = dlq(tmp_path)
    assert sorted(refused) == sorted(bad), refused
    assert "outside the root" in refused[5]
    assert "cannot be a path part" in refused[1] and "cannot be a path part" in refused[2]
    assert list(outside.iterdir()) == [], "nothing written through the symlink"
    assert not (tmp_path / "x.ndjson").exists() and not list(tmp_path.glob("**/etc"))


def test_rotation_by_size_keeps_n(tmp_path: Path, write: Any) -> None:
    recs = [{"id": i, "dir": "d", "pad": "x" * 80} for i in range(200)]
    run(tmp_path, write, recs, '{path: "logs/app.ndjson", rotate_bytes: 2000, keep: 3}')
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["app.ndjson", "app.ndjson.1", "app.ndjson.2", "app.ndjson.3"]
    ids = []
    for name in ["app.ndjson.3", "app.ndjson.2", "app.ndjson.1", "app.ndjson"]:
        ids += [json.loads(x)["id"] for x in (tmp_path / "logs" / name).read_text().splitlines()]
    assert ids == list(range(ids[0], 200)), "the newest records, in order, none torn"
    assert all((tmp_path / "logs" / f).stat().st_size <= 2000 + 8 * 120 for f in files[1:])


def test_fixed_path_outside_root_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: file, config: {path: ../elsewhere.ndjson, root: here}}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "is outside the root" in res.stderr.decode()


def test_codec_options_from_yaml_also_on_workers(tmp_path: Path, write: Any) -> None:
    """`codec: {name: csv, ...}` configures a codec for one component, in the parent and in the workers."""
    write("stage.py", "def tag(event, meta):\n    event['n'] = int(event['n']) * 2\n    return event\n")
    write("in.csv", "a;1\nb;2\nc\n")
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 2, metrics: {listen: null}}
onramps: {src: {type: file, codec: {name: csv, delimiter: ";", header: [name, n]}, config: {path: in.csv}}}
pipelines: {main: [{op: python, fn: "stage:tag"}]}
offramps:
  out: {type: file, codec: json, config: {path: out.ndjson}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], src/err: [dlq], main/err: [dlq]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    assert [json.loads(x) for x in (tmp_path / "out.ndjson").read_text().splitlines()] == [{"name": "a", "n": 2}, {"name": "b", "n": 4}]
    errors = [json.loads(x)["meta"]["error"] for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["type"] in ("DecodeError", "KeyError")


def test_unknown_codec_option_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin, codec: {name: csv, delimitr: ";"}}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78
    assert "c.yaml:3:" in res.stderr.decode() and "unknown key 'delimitr' in codec 'csv' of onramp 'src'" in res.stderr.decode()

"""A record that does not decode reaches its dead letter exactly: as its text when it is UTF-8,
else as its bytes (JSON: ``{"base64": ...}``), never as an approximation (was: invalid UTF-8
replaced by backslash escapes, which cannot be told from a record that held backslashes)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.support.daemon import headrace


def test_undecodable_records_keep_their_exact_bytes_in_a_json_dead_letter(tmp_path: Path) -> None:
    records = [b'{"ok": 1}', b"\xff\xfe not json \\x41", b'{broken \\xff', b'{"ok": 2}']
    (tmp_path / "in.ndjson").write_bytes(b"\n".join(records) + b"\n")
    (tmp_path / "c.yaml").write_text("""
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, codec: json, config: {path: in.ndjson}}}
offramps:
  out: {type: file, codec: json, config: {path: out.ndjson}}
  dead: {type: file, codec: json, with_meta: true, config: {path: dead.ndjson}}
links: {src: [out], src/err: [dead]}
""")
    r = headrace("run", "c.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()] == [{"ok": 1}, {"ok": 2}]
    dead = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_bytes().splitlines()]
    assert [d["meta"]["error"]["type"] for d in dead] == ["DecodeError", "DecodeError"]
    assert base64.b64decode(dead[0]["event"]["base64"]) == records[1], "not UTF-8: its exact bytes"
    assert dead[1]["event"] == records[2].decode(), "UTF-8: its text, backslashes as they were"

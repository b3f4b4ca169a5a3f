"""The file offramp: path templates confined to a root, rotation, refusals to err."""

from __future__ import annotations

import json
import os
import resource
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.reliability.harness import scrape_or_empty
from tests.support.daemon import Daemon, free_port, json_lines

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
    return {x["event"]["id"]: x["meta"]["error"]["message"] for x in json_lines(p)}


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


def test_paths_that_cannot_be_opened_go_to_err_and_the_others_are_written_once(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 5: a name too long, a folder's name, a file where a folder should be: each is
    refused to err with the reason; the batch's other files are written once, not on every retry."""
    (tmp_path / "out" / "adir" / "x.ndjson").mkdir(parents=True)  # a folder where the file should be
    (tmp_path / "out" / "afile").write_text("")  # a file where a folder should be
    bad = {2: "n" * 300, 5: "adir", 7: "afile"}
    recs = [{"id": i, "dir": bad.get(i, "ok")} for i in range(10)]
    write("stage.py", STAGE)
    write("in.ndjson", "".join(json.dumps(r) + "\n" for r in recs))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}, batch_size: 10}
onramps: {src: {type: file, config: {path: in.ndjson}}}
pipelines: {main: [{op: python, fn: "stage:route"}]}
offramps:
  out: {type: file, config: {path: "out/{meta.dir}/x.ndjson"}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], out/err: [dlq]}
""")
    d = Daemon(cfg)
    try:
        assert d.wait(20) == 0, d.stderr()
    finally:
        d.stop()
    assert [json.loads(x)["id"] for x in (tmp_path / "out" / "ok" / "x.ndjson").read_text().splitlines()] == [0, 1, 3, 4, 6, 8, 9]
    refused = dlq(tmp_path)
    assert sorted(refused) == [2, 5, 7], refused
    assert "File name too long" in refused[2] and "Is a directory" in refused[5] and "File exists" in refused[7], refused


def test_one_full_file_is_retried_alone_and_its_records_written_once_space_returns(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 5: a file that cannot grow (EFBIG under a file size limit, as a full disk gives
    ENOSPC) is retried with backoff, alone: the batch's other file is written once, not per retry."""
    limit = 32 * 1024
    big = tmp_path / "out" / "big" / "x.ndjson"
    big.parent.mkdir(parents=True)
    big.write_text("x" * 63 + "\n" * 1 + ("y" * 63 + "\n") * (limit // 64))  # already past the limit: appends fail
    recs = [{"id": i, "dir": "big" if i % 3 == 1 else "ok"} for i in range(30)]  # the ok file comes first in the batch
    write("stage.py", STAGE)
    write("in.ndjson", "".join(json.dumps(r) + "\n" for r in recs))
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, batch_size: 30}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: python, fn: "stage:route"}}]}}
offramps:
  out: {{type: file, config: {{path: "out/{{meta.dir}}/x.ndjson"}}}}
links: {{src: [main], main: [out]}}
""")
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))  # inherited by the daemon from its start
    try:
        d = Daemon(cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    series = 'headrace_component_errors_total{component_id="out",component_kind="offramp",error_type="OSError"}'
    ok = tmp_path / "out" / "ok" / "x.ndjson"
    try:
        d.wait_for(lambda: scrape_or_empty(port).get(series, 0) >= 3 * 10, timeout=30)  # the big file's records failed 3 times or more
        assert sorted(json.loads(x)["id"] for x in ok.read_text().splitlines()) == [i for i in range(30) if i % 3 != 1], "ok records once each"
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, saved)  # space returns
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    assert sorted(json.loads(x)["id"] for x in ok.read_text().splitlines()) == [i for i in range(30) if i % 3 != 1]
    tail = big.read_text().splitlines()[limit // 64 + 1 :]
    assert sorted(json.loads(x)["id"] for x in tail) == [i for i in range(30) if i % 3 == 1], "no torn or repeated record in the big file"



@contextmanager
def tcp_to_file(tmp_path: Path, write: Any, file_config: str) -> Iterator[tuple[Daemon, Callable[[dict[str, Any]], None]]]:
    """A daemon writing what arrives on a TCP port to a file offramp: it and a sender of one record."""
    from tests.plugins.peers import wait_connectable

    write("stage.py", STAGE)
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: tcp, config: {{port: {port}}}}}}}
pipelines: {{main: [{{op: python, fn: "stage:route"}}]}}
offramps: {{out: {{type: file, config: {file_config}}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            yield d, lambda record: conn.sendall(json.dumps(record).encode() + b"\n")
    finally:
        assert d.stop() == 0, d.stderr()


def ids_in(path: Path) -> list[int]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def test_a_file_rotated_or_deleted_by_someone_else_is_opened_again(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 6: logrotate without copytruncate renames the file; then the file is deleted.
    Both times the next records go to a new file at the path, not to the renamed or deleted one."""
    out = tmp_path / "out.ndjson"
    with tcp_to_file(tmp_path, write, "{path: out.ndjson}") as (d, send):
        for i in range(3):
            send({"id": i, "dir": "x"})
        d.wait_for(lambda: ids_in(out) == [0, 1, 2])
        out.rename(tmp_path / "out.ndjson.1")  # what logrotate does (its "create" makes an empty file or not)
        for i in range(3, 6):
            send({"id": i, "dir": "x"})
        d.wait_for(lambda: ids_in(out) == [3, 4, 5], timeout=10)
        out.unlink()
        for i in range(6, 9):
            send({"id": i, "dir": "x"})
        d.wait_for(lambda: ids_in(out) == [6, 7, 8], timeout=10)
    assert ids_in(tmp_path / "out.ndjson.1") == [0, 1, 2]


def open_files(pid: int, folder: Path) -> set[str]:
    names = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder) + "/"):
            names.add(target[len(str(folder)) + 1 :])
    return names


def test_max_open_closes_the_least_recently_used_file(tmp_path: Path, write: Any) -> None:
    """Also in issue 12: ``max_open`` closed the first opened file, not the least recently used one."""
    folder = tmp_path / "out"
    with tcp_to_file(tmp_path, write, '{path: "out/{meta.dir}.ndjson", max_open: 2}') as (d, send):
        for i, name in enumerate(["a", "b", "a", "c"]):  # a is used after b: b is the least recently used when c opens
            send({"id": i, "dir": name})
            d.wait_for(lambda i=i, name=name: i in ids_in(folder / f"{name}.ndjson"))  # type: ignore[misc]
        assert open_files(d.pid, folder) == {"a.ndjson", "c.ndjson"}

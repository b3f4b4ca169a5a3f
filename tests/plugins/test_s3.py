"""The s3 offramp against a real S3 API server: moto in server mode (issue 18). One moto serves
the module, each test its own bucket; what a test checks is the server's own view: the bucket
listed and every object read back, decompressed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, headrace, json_lines, metric
from tests.support.s3 import KEY_ID, SECRET, MotoServer, Proxy

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    s = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    return moto.bucket(f"t-{uuid.uuid4().hex[:12]}")


def _records(n: int, start: int = 0, **extra: Any) -> str:
    return "".join(json.dumps({"id": i, "app": "ab"[i % 2], **extra}) + "\n" for i in range(start, start + n))


def _config(tmp_path: Path, url: str, bucket: str, port: int, s3: str, *, follow: bool = False, pipeline: str = "", retry: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    follow_cfg = ", follow: true, poll_interval: 20ms" if follow else ""
    links = "{src: [p], p: [out], p/err: [bad], out/err: [bad]}" if pipeline else "{src: [out], out/err: [bad]}"
    pipelines = f"pipelines: {{p: {pipeline}}}" if pipeline else ""
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, shutdown_timeout: 30s, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson{follow_cfg}}}}}}}
{pipelines}
offramps:
  out: {{type: s3, codec: json, {retry}config: {{bucket: {bucket}, endpoint_url: "{url}", force_path_style: true, access_key_id: "${{AWS_ACCESS_KEY_ID}}",
                                        secret_access_key: "${{AWS_SECRET_ACCESS_KEY}}", {s3}}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {links}
""")
    return cfg


def _ids(objects: dict[str, bytes]) -> list[int]:
    return [json.loads(line)["id"] for data in objects.values() for line in data.splitlines()]


def _run_to_end(cfg: Path) -> Daemon:
    d = Daemon(cfg, env=CREDS)
    assert d.wait(60) == 0, d.stderr()
    return d


@pytest.mark.parametrize("compression", ["gzip", "zstd"])  # none: the multipart test
def test_objects_split_by_count_hold_each_record_once_under_keys_from_meta(tmp_path: Path, moto: MotoServer, bucket: str,
                                                                           compression: str) -> None:  # fmt: skip
    (tmp_path / "in.ndjson").write_text(_records(1000))
    s3 = f'key: "logs/{{meta.app}}/%Y/{{uuid}}.ndjson", compression: {compression}, batch: {{max_events: 150}}'
    cfg = _config(tmp_path, moto.url, bucket, free_port(), s3, pipeline="[{op: set, set: {meta.app: \"event['app']\"}}]")
    _run_to_end(cfg)
    objects = moto.objects(bucket)
    assert sorted(_ids(objects)) == list(range(1000)), "every record once"
    year = r"\d{4}"
    for key, data in objects.items():
        m = re.fullmatch(rf"logs/([ab])/{year}/[0-9a-f]{{32}}\.ndjson", key)
        assert m, key
        assert {json.loads(line)["app"] for line in data.splitlines()} == {m.group(1)}, "an object holds its prefix's records only"
    counts = sorted(len(d.splitlines()) for d in objects.values())
    assert counts == [50, 50] + [150] * 6, "500 records per app: 3 objects of max_events, the rest closed at the end of the input"
    head = moto.client().head_object(Bucket=bucket, Key=next(iter(objects)))
    assert head.get("ContentEncoding", "") == ("" if compression == "none" else compression)


def test_objects_split_by_size(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    (tmp_path / "in.ndjson").write_text(_records(3000, pad="x" * 60))
    _run_to_end(_config(tmp_path, moto.url, bucket, free_port(), "key: '{uuid}.gz', batch: {max_bytes: 20000}"))
    objects = moto.objects(bucket)
    assert sorted(_ids(objects)) == list(range(3000))
    sizes = sorted((len(d) - len(d.splitlines()) for d in objects.values()), reverse=True)  # record bytes, without the newlines
    record = max(len(line) for d in objects.values() for line in d.splitlines())
    assert len(sizes) > 5
    assert all(20000 <= s < 20000 + record for s in sizes[:-1]), f"closed by the record reaching max_bytes: {sizes}"


def test_an_object_closes_by_age_while_the_daemon_runs_on(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    src = tmp_path / "in.ndjson"
    src.write_text(_records(10))
    d = Daemon(_config(tmp_path, moto.url, bucket, free_port(), "key: '{uuid}.gz', batch: {timeout: 300ms}", follow=True), env=CREDS)
    try:
        d.wait_for(lambda: len(moto.objects(bucket)) == 1, timeout=20)
        with open(src, "a") as f:
            f.write(_records(5, 10))
        d.wait_for(lambda: len(moto.objects(bucket)) == 2, timeout=20)
    finally:
        assert d.stop() == 0, d.stderr()
    assert sorted(len(v.splitlines()) for v in moto.objects(bucket).values()) == [5, 10]


def test_a_large_object_is_a_multipart_upload(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    (tmp_path / "in.ndjson").write_text(_records(12_000, pad="y" * 1000))  # about 12 MiB
    _run_to_end(_config(tmp_path, moto.url, bucket, free_port(), "key: '{uuid}', compression: none, part_size: 5MiB, batch: {max_bytes: 64MiB}"))
    objects = moto.objects(bucket)
    assert len(objects) == 1 and sorted(_ids(objects)) == list(range(12_000))
    head = moto.client().head_object(Bucket=bucket, Key=next(iter(objects)))
    assert "ContentEncoding" not in head, "compression: none"
    etag = head["ETag"]
    assert etag.strip('"').endswith("-3"), f"3 parts (5 + 5 + 2 MiB): {etag}"
    assert not moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads"), "no upload left unfinished"


def test_sigterm_uploads_the_open_object(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    (tmp_path / "in.ndjson").write_text(_records(500))
    port = free_port()
    d = Daemon(_config(tmp_path, moto.url, bucket, port, "key: '{uuid}.gz', batch: {timeout: 10m}", follow=True), env=CREDS)
    try:
        received = 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}'
        d.wait_for(lambda: metric(port, received) == 500, timeout=20)
        assert moto.objects(bucket) == {}, "the object is still open (10 minutes)"
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    assert sorted(_ids(moto.objects(bucket))) == list(range(500))


def test_behind_a_disk_buffer_each_write_is_an_object_at_once(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    """The runtime writes from a disk buffer one write at a time: the offramp must not wait for more (batch.timeout is 10 minutes)."""
    src = tmp_path / "in.ndjson"
    src.write_text(_records(100))
    cfg = _config(tmp_path, moto.url, bucket, free_port(), "key: '{uuid}.gz', batch: {timeout: 10m}", follow=True)
    cfg.write_text(cfg.read_text().replace("type: s3, codec: json,", "type: s3, codec: json, buffer: {type: disk, max_bytes: 10MiB},"))
    d = Daemon(cfg, env=CREDS)
    try:
        d.wait_for(lambda: len(_ids(moto.objects(bucket))) == 100, timeout=20)
        with open(src, "a") as f:
            f.write(_records(50, 100))
        d.wait_for(lambda: len(_ids(moto.objects(bucket))) == 150, timeout=20)
    finally:
        assert d.stop() == 0, d.stderr()
    assert sorted(_ids(moto.objects(bucket))) == list(range(150))


def test_records_whose_key_or_encoding_fails_go_to_err_with_the_reason_and_the_rest_is_written(tmp_path: Path, moto: MotoServer,
                                                                                                 bucket: str) -> None:  # fmt: skip
    lines = [{"id": 0, "app": "web"}, {"id": 1}, {"id": 2, "app": "a/../b"}, {"id": 3, "app": "web", "bad": True}, {"id": 4, "app": ".."},
             {"id": 5, "app": "x" * 1100}, {"id": 6, "app": "db"}]  # fmt: skip
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(x) + "\n" for x in lines))
    pipeline = "[{op: set, set: {meta.app: \"event.get('app')\", big: \"2 ** 70 if event.get('bad') else 1\"}}]"
    cfg = _config(tmp_path, moto.url, bucket, free_port(), "key: '{meta.app}/{uuid}'", pipeline=pipeline)
    text = cfg.read_text().replace("type: s3, codec: json", "type: s3, codec: msgpack, postprocessors: [length-prefixed]")
    cfg.write_text(text)
    _run_to_end(cfg)
    import msgpack

    written = {}
    for key, data in moto.objects(bucket).items():
        pos = 0
        while pos < len(data):
            n = int.from_bytes(data[pos : pos + 4], "big")
            written[key.split("/")[0]] = msgpack.unpackb(data[pos + 4 : pos + 4 + n])["id"]
            pos += 4 + n
    assert written == {"web": 0, "db": 6}
    errs = {e["event"]["id"]: e["meta"]["error"]["message"] for e in json_lines(tmp_path / "err.ndjson")}
    assert sorted(errs) == [1, 2, 3, 4, 5], errs
    assert "meta key 'app' of the key template is missing" in errs[1]
    assert "cannot be a part of an object key" in errs[2] and "cannot be a part of an object key" in errs[4]
    assert "cannot encode with msgpack" in errs[3]
    assert "longer than 1024 bytes" in errs[5]


def test_a_missing_bucket_is_retried_then_given_up_to_err_with_the_reason(tmp_path: Path, moto: MotoServer) -> None:
    (tmp_path / "in.ndjson").write_text(_records(10))
    cfg = _config(tmp_path, moto.url, "no-such-bucket-here", free_port(), "key: '{uuid}.gz', batch: {timeout: 100ms}")
    cfg.write_text(cfg.read_text().replace("type: s3, codec: json,", "type: s3, codec: json, retry: {max_attempts: 2},"))
    d = _run_to_end(cfg)
    errs = json_lines(tmp_path / "err.ndjson")
    assert sorted(e["event"]["id"] for e in errs) == list(range(10)), "nothing lost: every record on err"
    error = errs[0]["meta"]["error"]
    assert error["type"] == "GaveUp" and error["attempts"] == 2
    assert "NoSuchBucket" in error["last_error"], error
    assert "upload of s3://no-such-bucket-here/" in d.stderr()


@pytest.mark.parametrize(("key", "message"), [("logs/%Y.gz", "key must hold {uuid}"), ("{uuid}/{meta.a-b}", "unknown placeholder {meta.a-b}"),
                                              ("/{uuid}", "must not start with '/'"), ("{uuid}{", "unmatched"),
                                              ("{uuid}', level: 12, compression: 'gzip", "gzip's levels are 1 to 9")])  # fmt: skip
def test_check_refuses_a_bad_key_template_or_level(tmp_path: Path, key: str, message: str) -> None:
    (tmp_path / "in.ndjson").write_text("")
    cfg = _config(tmp_path, "http://127.0.0.1:9", "bkt", free_port(), f"key: '{key}'")
    res = headrace("check", str(cfg), env=CREDS)
    assert res.returncode == 78, res.stderr
    assert message in res.stderr.decode()


@pytest.mark.slow
def test_an_outage_of_10s_loses_nothing_and_the_state_metric_shows_it(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    """The outage is a TCP proxy in front of moto that refuses connections for 10 s: moto keeps its
    buckets in memory, so a restarted moto would have lost what was uploaded before the outage."""
    proxy = Proxy(moto.port)
    port = free_port()
    src = tmp_path / "in.ndjson"
    src.write_text(_records(2000))
    cfg = _config(tmp_path, proxy.url, bucket, port, "key: '{uuid}.gz', timeout: 2s, batch: {max_events: 500, timeout: 200ms}", follow=True,
                  retry="retry: {max_backoff: 1s}, ")
    d = Daemon(cfg, env=CREDS)
    try:
        d.wait_for(lambda: len(_ids(moto.objects(bucket))) == 2000, timeout=30)
        proxy.down()
        with open(src, "a") as f:  # more arrives while S3 cannot be reached
            f.write(_records(18_000, 2000))
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1, timeout=30)
        ten = threading.Event()
        threading.Timer(10.0, ten.set).start()
        d.wait_for(ten.is_set, timeout=20)  # unreachable for 10 s
        assert len(_ids(moto.objects(bucket))) == 2000
        proxy.up()
        d.wait_for(lambda: len(set(_ids(moto.objects(bucket)))) == 20_000, timeout=60)
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="ok"}') == 1, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
        proxy.close()
    ids = _ids(moto.objects(bucket))
    assert sorted(set(ids)) == list(range(20_000)), "the bucket holds every record"
    assert len(ids) == 20_000, "a failed upload is retried into a new object; the refused ones never reached the bucket"


@pytest.mark.slow
def test_a_sigkill_in_the_middle_loses_nothing(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    """50,000 records from a followed file (its delivered offset checkpointed): 10,000 first; once
    objects of them are in the bucket the other 40,000 are appended, and the daemon is SIGKILLed
    as soon as its offramp has taken the first of those (objects open and uploading); restart:
    every record in the bucket, duplicates only from objects uploaded before the kill."""
    n = 50_000
    src = tmp_path / "in.ndjson"
    src.write_text(_records(10_000))
    port = free_port()
    cfg = _config(tmp_path, moto.url, bucket, port, "key: '{uuid}.gz', batch: {max_events: 1000, timeout: 200ms}", follow=True)
    received = 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}'
    d = Daemon(cfg, env=CREDS)
    try:
        d.wait_for(lambda: len(moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])) >= 3, timeout=60)
        with open(src, "a") as f:
            f.write(_records(n - 10_000, 10_000))
        d.wait_for(lambda: metric(port, received) > 10_000, timeout=30, interval=0.005)
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    before, seen = -1, len(_ids(moto.objects(bucket)))
    while seen != before:  # an upload moto was still storing at the kill lands in the count
        before = seen
        time.sleep(0.3)
        seen = len(_ids(moto.objects(bucket)))
    assert 3000 <= before < n, before
    d = Daemon(cfg, env=CREDS)
    try:
        d.wait_for(lambda: set(_ids(moto.objects(bucket))) == set(range(n)), timeout=60, interval=0.5)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = _ids(moto.objects(bucket))
    assert sorted(set(ids)) == list(range(n)), "every record delivered"
    assert len(ids) - n <= before, "duplicates: only records of objects uploaded before the kill"


def test_the_example_config_runs_against_moto(tmp_path: Path, moto: MotoServer, bucket: str) -> None:
    shutil.copy(ROOT / "examples" / "s3.yaml", tmp_path / "s3.yaml")
    src = tmp_path / "s3" / "in"
    src.mkdir(parents=True)
    lines = [{"app": "web", "level": "info", "msg": "hello"}, {"app": "db", "level": "error", "msg": "slow query"},
             {"app": "web", "level": "debug", "msg": "dropped"}, "not json"]  # fmt: skip
    (src / "app.log").write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    env = {**CREDS, "S3_ENDPOINT": moto.url, "S3_BUCKET": bucket, "HEADRACE_METRICS_PORT": str(free_port()), "S3_FLUSH": "200ms"}
    d = Daemon(tmp_path / "s3.yaml", env=env)
    try:
        d.wait_for(lambda: len(moto.objects(bucket)) == 2, timeout=30)
        d.wait_for(lambda: len(json_lines(tmp_path / "s3" / "out" / "deadletter.ndjson")) == 1, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    objects = moto.objects(bucket)
    by_app = {k.split("/")[1]: [json.loads(x)["msg"] for x in v.splitlines()] for k, v in objects.items()}
    assert by_app == {"web": ["hello"], "db": ["slow query"]}, objects.keys()
    assert all(k.endswith(".ndjson.gz") and k.startswith("logs/") for k in objects)
    assert os.path.exists(tmp_path / "s3" / "out" / "deadletter.ndjson")

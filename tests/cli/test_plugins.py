"""``headrace plugins --format json`` and ``headrace plugins NAME`` through the real command."""

from __future__ import annotations

import json
import re

from headrace import registry
from headrace.plugins.offramps.file import FileOfframp
from headrace.plugins.onramps.kafka import KafkaOnramp
from tests.support.daemon import headrace


def test_json_lists_every_plugin() -> None:
    r = headrace("plugins", "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    rows = json.loads(r.stdout)
    listed = {(row["kind"], row["name"]) for row in rows}
    for kind in registry.KINDS:
        for name in registry.BUILTINS[kind]:
            assert (kind, name) in listed
    kafka = next(row for row in rows if row["kind"] == "onramps" and row["name"] == "kafka")
    assert kafka == {"kind": "onramps", "name": "kafka", "summary": KafkaOnramp.summary, "origin": "built-in", "loads": True}


def test_one_plugin_shows_its_settings() -> None:
    r = headrace("plugins", "file")  # an onramp and an offramp
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith("onramp file  [built-in]\n")
    assert "\noffram file" not in out and "\nofframp file  [built-in]\n" in out
    assert "Settings (the offramp's `config:`):" in out
    assert re.search(r"^  rotate_bytes +size \(`4096`, `64KiB`, `16MiB`\) or null; default `None`$", out, re.M)
    assert re.search(f"^ +{re.escape(str(FileOfframp.Config.model_fields['rotate_bytes'].description))}$", out, re.M)
    assert re.search(r"^  path +str; required$", out, re.M)
    assert "Default postprocessors: lines" in out


def test_one_plugin_as_json_with_its_schema() -> None:
    r = headrace("plugins", "onramp/kafka", "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    (doc,) = json.loads(r.stdout)
    assert (doc["kind"], doc["name"], doc["origin"]) == ("onramps", "kafka", "built-in")
    assert [s["key"] for s in doc["settings"]] == list(KafkaOnramp.Config.model_fields)
    brokers = next(s for s in doc["settings"] if s["key"] == "brokers")
    assert brokers["required"] is True and brokers["description"]
    assert set(doc["schema"]["properties"]) == set(KafkaOnramp.Config.model_fields)
    assert doc["default_preprocessors"] == list(KafkaOnramp.default_preprocessors)


def test_an_unknown_plugin_suggests_the_close_one() -> None:
    r = headrace("plugins", "kafak")
    assert r.returncode == 1
    assert r.stderr.decode() == "no plugin named 'kafak': did you mean 'kafka'? (see `headrace plugins`)\n"

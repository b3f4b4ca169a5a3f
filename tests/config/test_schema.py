"""``headrace schema`` accepts what ``check`` accepts, and refuses at the key ``check`` refuses.

- Every config of the repository that ``check`` accepts (the examples, and every YAML config
  the tests write) validates against the schema, as written (before interpolation).
- A corpus of bad configs: ``check`` and the schema both refuse each at the same key, and
  whatever the schema refuses in ``check``'s own error corpus, ``check`` refuses there too.
- Scalars: for durations, sizes, numbers and booleans, the schema and the model agree on
  every sample form (numbers as strings, units, yes/no, ``${VAR}``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from headrace import registry
from headrace.config.errors import ConfigError
from headrace.config.load import load_text
from headrace.config.schema import SCHEMA_ID, json_schema
from headrace.config.schema_types import LaxJsonSchema
from headrace.config.yamlpos import load_yaml
from headrace.contract.units import Duration, Size
from tests.config.test_errors import INVALID, STAGE_FILES
from tests.config.test_valid import ENV_CONFIG, VALID
from tests.support.configs import ROOT, ConfigText, embedded_configs, example_configs, stub_stage_modules
from tests.support.imports import restored_imports

Validator = jsonschema.Draft202012Validator


@pytest.fixture(scope="module")
def validator() -> Validator:
    schema = json_schema()
    Validator.check_schema(schema)
    return Validator(schema)


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    with restored_imports():
        yield


def checked(cfg: ConfigText, folder: Path) -> bool:
    """Whether ``check`` accepts the config, with stand-ins for stage modules a test would write."""
    data = yaml.safe_load(cfg.text)
    stub_stage_modules(data, folder)
    with restored_imports():
        try:
            load_text(cfg.text, folder / "headrace.yaml", env={})
            return True
        except ConfigError:
            return False


def schema_errors(validator: Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(data)]


# -- every accepted config validates ------------------------------------------------------------------


def test_every_config_check_accepts_validates(validator: Validator, tmp_path: Path) -> None:
    corpus = [*example_configs(), *embedded_configs()]
    corpus += [ConfigText(f"tests/config/test_valid.py VALID[{p.id}]", tmp_path, p.values[0]) for p in VALID]
    corpus.append(ConfigText("tests/config/test_valid.py ENV_CONFIG", tmp_path, ENV_CONFIG.replace("${HR_DIR}", "${HR_DIR:-data}")))
    accepted, failures = 0, []
    for i, cfg in enumerate(corpus):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        if not checked(cfg, folder):
            continue
        accepted += 1
        errors = schema_errors(validator, yaml.safe_load(cfg.text))
        if errors:
            failures.append(f"{cfg.origin}: {errors}")
    assert failures == []
    assert accepted >= 80, accepted  # the corpus is real (87 on 2026-12-03): the rest are invalid on purpose or built at run time


def test_every_test_file_validates() -> None:
    tests = Validator(json_schema("tests"))
    files = sorted(ROOT.glob("examples/*_test.yaml"))
    assert files
    for path in files:
        assert schema_errors(tests, yaml.safe_load(path.read_text())) == [], path


# -- bad configs fail on the same key -------------------------------------------------------------------

BASE = {
    "version": 1,
    "onramps": {"src": {"type": "file", "codec": "json", "config": {"path": "in.ndjson"}}},
    "pipelines": {"main": [{"op": "python", "fn": "hr_schema_stage:work"}, {"op": "filter", "where": "True"}]},
    "offramps": {"out": {"type": "file", "config": {"path": "out.ndjson"}}},
    "links": {"src": ["main"], "main": ["out"]},
}


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for p in parents:
        target = target[p]
    target[last] = value
    return doc


BAD = [  # (what, path to set, value, path of the key both must refuse)
    ("unknown top-level key", "onramp", {}, "onramp"),
    ("unknown daemon key", "daemon", {"worker": 2}, "daemon.worker"),
    ("workers a word", "daemon", {"workers": "many"}, "daemon.workers"),
    ("workers too many", "daemon", {"workers": 5000}, "daemon.workers"),
    ("duration a word", "daemon", {"shutdown_timeout": "soon"}, "daemon.shutdown_timeout"),
    ("duration negative", "daemon", {"stage_timeout": -1}, "daemon.stage_timeout"),
    ("duration zero where it must be positive", "daemon", {"start_timeout": "0s"}, "daemon.start_timeout"),
    ("size in an unknown unit", "daemon", {"queue_bytes": "16 megs"}, "daemon.queue_bytes"),
    ("number below its minimum", "daemon", {"batch_size": 0}, "daemon.batch_size"),
    ("number as a word", "daemon", {"queue_events": "lots"}, "daemon.queue_events"),
    ("unknown metrics key", "daemon", {"metrics": {"listn": "127.0.0.1:0"}}, "daemon.metrics.listn"),
    ("version 2", "version", 2, "version"),
    ("unknown onramp key", "onramps.src.cdec", "json", "onramps.src.cdec"),
    ("onramp type typo", "onramps.src.type", "fiel", "onramps.src.type"),
    ("onramp without type", "onramps.src", {"codec": "json"}, "onramps.src"),
    ("codec typo", "onramps.src.codec", "jsonn", "onramps.src.codec"),
    ("codec option typo", "onramps.src.codec", {"name": "csv", "delimeter": ";"}, "onramps.src.codec.delimeter"),
    ("preprocessor typo", "onramps.src.preprocessors", ["line"], "onramps.src.preprocessors.0"),
    ("preprocessor option typo", "onramps.src.preprocessors", [{"name": "lines", "max_bytes": 10}], "onramps.src.preprocessors.0.max_bytes"),
    ("plugin config key typo", "onramps.src.config.pth", "x", "onramps.src.config.pth"),
    ("plugin config bool a word", "onramps.src.config.follow", "maybe", "onramps.src.config.follow"),
    ("plugin config duration zero", "onramps.src.config.poll_interval", 0, "onramps.src.config.poll_interval"),
    ("plugin config of another plugin", "onramps.src.config.brokers", "x:9092", "onramps.src.config.brokers"),
    ("offramp key typo", "offramps.out.with_mta", True, "offramps.out.with_mta"),
    ("offramp type typo", "offramps.out.type", "stdot", "offramps.out.type"),
    ("offramp config enum typo", "offramps.out.config.mode", "apend", "offramps.out.config.mode"),
    ("postprocessor typo", "offramps.out.postprocessors", ["gzp"], "offramps.out.postprocessors.0"),
    ("operator typo", "pipelines.main.1.op", "filtr", "pipelines.main.1.op"),
    ("operator option typo", "pipelines.main.1.wehre", "True", "pipelines.main.1.wehre"),
    ("operator without op", "pipelines.main.1", {"where": "True"}, "pipelines.main.1"),
    ("python fn without colon", "pipelines.main.0.fn", "hr_schema_stage.work", "pipelines.main.0.fn"),
    ("python placement enum", "pipelines.main.0.placement", "gpu", "pipelines.main.0.placement"),
    ("graph pipeline key typo", "pipelines.main", {"nodez": {}, "links": {}}, "pipelines.main.nodez"),
    ("graph node option typo", "pipelines.main", {"nodes": {"b": {"op": "bucket", "slot": 1}}, "links": {"in": ["b"], "b": ["out"]}},
     "pipelines.main.nodes.b.slot"),
    ("graph node id reserved", "pipelines.main", {"nodes": {"out": {"op": "filter", "where": "True"}}, "links": {"in": ["out"]}},
     "pipelines.main.nodes.out"),
    ("link targets not a list", "links.src", {"main": 1}, "links.src"),
]


def _position(smap: Any, path: tuple[str | int, ...], *, key: bool) -> tuple[int, int]:
    pos = smap.at(path, key=key)
    return pos.line, pos.col


def schema_positions(validator: Validator, data: Any, text: str) -> dict[tuple[int, int], str]:
    """Where the schema's errors point in ``text``: an unknown key at the key, a missing one at its mapping's key, else at the value."""
    _, smap = load_yaml(text, "c.yaml", env={})
    out = {}
    for e in validator.iter_errors(data):
        path = tuple(e.absolute_path)
        if e.validator == "additionalProperties":
            allowed = set(e.schema.get("properties", {}))
            for extra in sorted(set(e.instance) - allowed):
                out[_position(smap, (*path, extra), key=True)] = e.message
        elif e.validator == "required" or e.validator == "propertyNames":
            out[_position(smap, path, key=True)] = e.message
        else:
            out[_position(smap, path, key=False)] = e.message
    return out


def check_positions(text: str, folder: Path) -> set[tuple[int, int]]:
    (folder / "hr_schema_stage.py").write_text("def work(event, meta):\n    return event\n")
    for name, source in STAGE_FILES.items():
        (folder / name).write_text(source)
    with restored_imports():
        try:
            load_text(text, folder / "c.yaml", env={})
        except ConfigError as exc:
            return {(i.position.line, i.position.col) for i in exc.issues}
    return set()


def test_the_base_of_the_bad_corpus_is_valid(validator: Validator, tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False)
    assert check_positions(text, tmp_path) == set()
    assert schema_errors(validator, BASE) == []


@pytest.mark.parametrize(("what", "where", "value", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_fails_on_the_same_key(validator: Validator, tmp_path: Path, what: str, where: str, value: Any, key: str) -> None:
    import copy

    data = _set(copy.deepcopy(BASE), where, value)
    text = yaml.safe_dump(data, sort_keys=False)
    _, smap = load_yaml(text, "c.yaml", env={})
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    at_key, at_value = _position(smap, path, key=True), _position(smap, path, key=False)
    by_check = check_positions(text, tmp_path)
    by_schema = schema_positions(validator, data, text)
    assert by_check & {at_key, at_value}, (what, by_check, text)
    assert set(by_schema) & {at_key, at_value}, (what, by_schema, text)
    assert set(by_schema) <= by_check, (what, by_schema, by_check)
    for message in by_schema.values():  # one message about the value as written, not a list of failed alternatives
        assert "is not valid under any of the given schemas" not in message, message


def test_a_typo_in_type_or_op_names_the_allowed_values(validator: Validator) -> None:
    import copy

    data = _set(copy.deepcopy(BASE), "onramps.src.type", "fiel")
    (error,) = validator.iter_errors(data)
    assert error.message == f"'fiel' is not one of {registry.names('onramps')}"
    data = _set(copy.deepcopy(BASE), "pipelines.main.1.op", "filtr")
    (error,) = validator.iter_errors(data)
    assert error.message == f"'filtr' is not one of {registry.names('operators')}"


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_what_the_schema_refuses_in_the_error_corpus_check_refuses_there(validator: Validator, tmp_path: Path, text: str,
                                                                          expected: list[str]) -> None:  # fmt: skip
    try:
        data = yaml.safe_load(text)
        schema_positions(validator, {}, text)  # the text must load with positions
    except (yaml.YAMLError, ConfigError):
        return  # invalid YAML, or an unset variable: no document for the schema to see
    by_schema = schema_positions(validator, data, text)
    by_check = {tuple(int(x) for x in e.split(":")[:2]) for e in expected}
    assert set(by_schema) <= by_check, (by_schema, expected)


# -- scalars as written -----------------------------------------------------------------------------------


class Scalars(BaseModel):
    model_config = {"extra": "forbid"}
    count: int = 0
    ratio: float = 0.0
    flag: bool = False
    wait: Duration = 0.0
    size: Size = 0


SAMPLES = [0, 1, -1, 2.0, 2.5, True, False, None, [], {}, "", "0", "1", "-1", " 7 ", "+5", "1_000", "1__0", "_1", "5.0", "5.", ".5",
           "1e3", "1.5e-3", "inf", "-Infinity", "NaN", "nan5", "0x10", "٣", "yes", "no", "YES", "on", "Off", "t", "F", "y", "n",
           "true", "False", " yes", "2", "250ms", "20s", "1m", "1h", "10us", "1.5s", "-1s", "1 s", "s", "64KiB", "16MiB", "1GB", "4096",
           "1.5KiB", "10kb", "${X}", "${X:-5}", "${X:-5}s", "$X", "{X}", "many"]  # fmt: skip


@pytest.mark.parametrize("field", list(Scalars.model_fields))
def test_scalar_forms_agree_with_the_model(field: str) -> None:
    schema = Validator(Scalars.model_json_schema(schema_generator=LaxJsonSchema))
    for value in SAMPLES:
        if isinstance(value, str) and "${" in value:
            by_model = True  # interpolated before validation: any value may come out
        else:
            try:
                Scalars.model_validate({field: value})
                by_model = True
            except ValidationError:
                by_model = False
        if isinstance(value, bool) and field in ("count", "ratio"):
            continue  # pydantic takes true as 1: the schema asks for a number (the one difference)
        assert schema.is_valid({field: value}) == by_model, (field, value, by_model)


def test_no_pydantic_keyword_leaks_and_the_schema_has_an_id() -> None:
    schema = json_schema()
    assert schema["$id"] == SCHEMA_ID
    leaked = []

    def walk(node: Any, path: str, names: bool) -> None:
        if isinstance(node, dict):
            if not names:
                leaked.extend(f"{path}.{k}" for k in node if k in ("ge", "gt", "le", "lt", "min_length", "max_length"))
            for k, v in node.items():
                walk(v, f"{path}.{k}", k in ("properties", "$defs", "patternProperties") and not names)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}", False)

    walk(schema, "", False)
    assert leaked == []

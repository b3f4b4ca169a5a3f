"""Nodes of a list pipeline are named after what they run, so inserting a stage renames none of the others."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.config.errors import ConfigError
from headrace.config.load import load_file
from tests.support.imports import restored_imports

TEMPLATE = """\
version: 1
onramps: {{src: {{type: stdin}}}}
pipelines:
  main:
{stages}
offramps: {{out: {{type: stdout}}}}
links: {{src: [main], main/alerts: [out], main/default: [out]}}
"""
CLASSIFY = '    - {op: python, fn: "hr_names_stages:classify"}'
FILTER = "    - {op: filter, where: \"event['level'] != 'debug'\"}"
SET = "    - {op: set, set: {seen: 'True'}}"
ROUTE = "    - {op: route, routes: {alerts: \"event['level'] == 'error'\"}}"


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    with restored_imports():
        yield


def nodes(tmp_path: Path, *stages: str) -> list[str]:
    (tmp_path / "hr_names_stages.py").write_text("def classify(event, meta):\n    return event\n\nclass Enrich:\n"
                                                 "    def process(self, event, meta):\n        return event\n")  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(TEMPLATE.format(stages="\n".join(stages)))
    return [c.id for c in load_file(path, env={}).of_kind("node")]


def test_named_after_the_function_or_the_operator(tmp_path: Path) -> None:
    assert nodes(tmp_path, CLASSIFY, FILTER, ROUTE) == ["main.classify", "main.filter", "main.route"]
    enrich = '    - {op: python, fn: "hr_names_stages:Enrich"}'
    assert nodes(tmp_path, enrich, ROUTE) == ["main.Enrich", "main.route"]


def test_inserting_or_removing_a_stage_renames_nothing(tmp_path: Path) -> None:
    before = nodes(tmp_path, CLASSIFY, FILTER, ROUTE)
    inserted = nodes(tmp_path, SET, CLASSIFY, SET.replace("seen", "again"), FILTER, ROUTE)
    assert inserted == ["main.set", "main.classify", "main.set_2", "main.filter", "main.route"]
    assert set(before) <= set(inserted)
    assert nodes(tmp_path, CLASSIFY, ROUTE) == ["main.classify", "main.route"]


def test_repeats_get_a_suffix_and_ids_come_first(tmp_path: Path) -> None:
    assert nodes(tmp_path, FILTER, FILTER, FILTER.replace("{op:", "{id: keep, op:"), ROUTE) == [
        "main.filter", "main.filter_2", "main.keep", "main.route"]  # fmt: skip
    # an id taken by hand wins over a name given by position
    assert nodes(tmp_path, FILTER, FILTER.replace("{op:", "{id: filter, op:"), ROUTE) == ["main.filter_2", "main.filter", "main.route"]


def test_an_id_that_cannot_name_a_node(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(TEMPLATE.format(stages="\n".join([FILTER.replace("{op:", "{id: a.b, op:"), FILTER.replace("{op:", "{id: out, op:"), ROUTE])))
    with pytest.raises(ConfigError) as info:
        load_file(path, env={})
    assert [str(i) for i in info.value.issues] == [
        f"{path}:5:12: node id 'a.b' is reserved or contains '.' or '/' in pipeline 'main'",
        f"{path}:6:12: node id 'out' is reserved or contains '.' or '/' in pipeline 'main'",
    ]

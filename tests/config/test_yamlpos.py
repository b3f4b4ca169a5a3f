"""Safe YAML loading with positions: ``${VAR}`` interpolation, key vs value positions, duplicate keys."""

from __future__ import annotations

import pytest

from headrace.config.errors import ConfigError, Position
from headrace.config.yamlpos import interpolate, load_yaml


def messages(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "c.yaml", {} if env is None else env)
    return [str(i) for i in info.value.issues]


# -- interpolation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A:-d}", {"A": ""}, "d"),  # set but empty: the default, as in the shell
        ("${A}", {"A": ""}, ""),
        ("${A:-}", {}, ""),
        ("${A}-${B:-b}/${A}", {"A": "a"}, "a-b/a"),
        ("127.0.0.1:${PORT:-9898}", {}, "127.0.0.1:9898"),
        ("${URL:-http://h:80/p?q=1}", {}, "http://h:80/p?q=1"),
        ("${A}", {"A": "${B}"}, "${B}"),  # not recursive
        ("$A and $$ and ${} and ${1X}", {"A": "x", "1X": "y"}, "$A and $$ and ${} and ${1X}"),
        ("no variables", {}, "no variables"),
    ],
)
def test_interpolate(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolate_unset_raises_key_error_naming_the_variable() -> None:
    with pytest.raises(KeyError) as info:
        interpolate("x ${SET} ${UNSET}", {"SET": "1"})
    assert info.value.args == ("UNSET",)


def test_interpolate_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_YAMLPOS_VAR", "from-env")
    assert interpolate("${HR_YAMLPOS_VAR}") == "from-env"
    monkeypatch.delenv("HR_YAMLPOS_VAR")
    assert interpolate("${HR_YAMLPOS_VAR:-fallback}") == "fallback"


def test_load_interpolates_string_values_only_and_keeps_them_strings() -> None:
    data, _ = load_yaml("port: ${P:-5}\nq: '${Q}'\nn: 5\nlist: [\"${P:-1}\", x]\n", "c.yaml", {"Q": "quoted"})
    assert data == {"port": "5", "q": "quoted", "n": 5, "list": ["1", "x"]}


def test_every_unset_variable_is_reported_at_its_value() -> None:
    assert messages("a: ${A}\nb:\n  - x\n  - pre ${B} post\n") == [
        "c.yaml:1:4: environment variable A is not set (use ${A:-default})",
        "c.yaml:4:5: environment variable B is not set (use ${B:-default})",
    ]


# -- positions -----------------------------------------------------------------------------------

TEXT = """\
a:
  b: 1
  c: [x, {d: y}]
"e": 'f'
"""


def test_positions_of_keys_and_values() -> None:
    data, smap = load_yaml(TEXT, "c.yaml")
    assert data == {"a": {"b": 1, "c": ["x", {"d": "y"}]}, "e": "f"}

    def p(line: int, col: int) -> Position:
        return Position("c.yaml", line, col)

    assert smap.keys == {
        ("a",): p(1, 1),
        ("a", "b"): p(2, 3),
        ("a", "c"): p(3, 3),
        ("a", "c", 1, "d"): p(3, 11),
        ("e",): p(4, 1),
    }
    assert smap.values == {
        (): p(1, 1),
        ("a",): p(2, 3),  # a block mapping starts at its first key
        ("a", "b"): p(2, 6),
        ("a", "c"): p(3, 6),
        ("a", "c", 0): p(3, 7),
        ("a", "c", 1): p(3, 10),
        ("a", "c", 1, "d"): p(3, 14),
        ("e",): p(4, 6),
    }


def test_at_prefers_the_key_when_asked_and_falls_back_to_the_nearest_ancestor() -> None:
    _, smap = load_yaml(TEXT, "c.yaml")
    assert str(smap.at(("a", "b"))) == "c.yaml:2:6"
    assert str(smap.at(("a", "b"), key=True)) == "c.yaml:2:3"
    assert str(smap.at(("a", "c", 0), key=True)) == "c.yaml:3:7"  # list items have no key: the value
    assert str(smap.at(("a", "c", 1, "missing"))) == "c.yaml:3:10"  # the mapping that lacks it
    assert str(smap.at(("a", "missing"), key=True)) == "c.yaml:1:1"  # nearest ancestor: key 'a'
    assert str(smap.at(("zzz",))) == "c.yaml:1:1"
    assert str(smap.at(())) == "c.yaml:1:1"


def test_empty_documents_are_empty_mappings() -> None:
    assert load_yaml("", "c.yaml")[0] == {}
    assert load_yaml("# only a comment\n", "c.yaml")[0] == {}


# -- rejected YAML --------------------------------------------------------------------------------


def test_duplicate_keys_are_reported_at_each_repetition() -> None:
    assert messages("a: 1\nb:\n  x: 1\n  x: 2\n  x: 3\na: 2\nc: {y: 1, y: 1}\n") == [
        "c.yaml:4:3: duplicate key 'x'",
        "c.yaml:5:3: duplicate key 'x'",
        "c.yaml:6:1: duplicate key 'a'",
        "c.yaml:7:11: duplicate key 'y'",
    ]


def test_integer_keys_count_as_their_text_for_duplicates() -> None:
    assert load_yaml("1: a\n2: b\n", "c.yaml")[0] == {"1": "a", "2": "b"}
    assert messages("1: a\n'1': b\n") == ["c.yaml:2:1: duplicate key '1'"]


def test_merge_keys_are_rejected() -> None:
    assert messages("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n") == ["c.yaml:3:3: YAML merge keys (<<) are not supported"]


def test_non_scalar_and_null_keys_are_rejected() -> None:
    assert messages("? [1, 2]\n: x\nnull: y\n") == ["c.yaml:1:3: keys must be strings", "c.yaml:3:1: keys must be strings"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            "1:4: invalid YAML: unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            "a: !!python/name:os.system x\n",
            "1:4: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ),
        ("a: !custom x\n", "1:4: invalid YAML: could not determine a constructor for the tag '!custom'"),
        ("a: !!set {x, y}\n", "1:4: invalid YAML: unsupported tag 'tag:yaml.org,2002:set'"),
        ("a: !!int abc\n", "1:4: invalid YAML: 'abc' is not a valid int"),
        ("a: 2001-13-45\n", "1:4: invalid YAML: '2001-13-45' is not a valid timestamp"),
        (
            "a: [1, 2\n",
            "2:1: invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 1, column 4)",
        ),
        ("a: 'open\n", "2:1: invalid YAML: found unexpected end of stream (while scanning a quoted scalar at line 1, column 4)"),
        ("a: b: c\n", "1:5: invalid YAML: mapping values are not allowed here"),
        ("a: *nope\n", "1:4: invalid YAML: found undefined alias 'nope'"),
        (
            "a: 1\n---\nb: 2\n",
            "2:1: invalid YAML: but found another document (expected a single document in the stream at line 1, column 1)",
        ),
    ],
)
def test_invalid_yaml_is_an_issue_not_a_crash(text: str, expected: str) -> None:
    assert messages(text) == [f"c.yaml:{expected}"]

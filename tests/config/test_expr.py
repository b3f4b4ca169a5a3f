"""``compile_expr``: the allow-listed Python expressions of ``where:``, ``routes:`` and ``set:``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from headrace.config.expr import ExpressionError, compile_expr

EVENT = {"level": "error", "msg": "Disk Full", "n": 7, "tags": ["a", "b"], "nested": {"x": 1}}
META = {"class": "ops", "kafka_partition": 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event['level'] == 'error'", True),
        ("event['level'] != 'error' or meta['class'] == 'ops'", True),
        ("not event.get('missing')", True),
        ("event.get('missing', 5) + 1", 6),
        ("event['nested']['x'] * 10 - 3", 7),
        ("event['n'] // 2, event['n'] % 2, event['n'] / 2", (3, 1, 3.5)),
        ("-event['n'] ** 2", -49),
        ("2 ** 10", 1024),
        ("1 << 4 | 1", 17),
        ("'ab' * 3", "ababab"),
        ("event['msg'].lower().startswith('disk')", True),
        ("event['msg'].split(' ')", ["Disk", "Full"]),
        ("'-'.join(event['tags'])", "a-b"),
        ("len(event['tags']) == 2 and 'a' in event['tags']", True),
        ("'z' not in event['tags']", True),
        ("[t.upper() for t in event['tags'] if t != 'b']", ["A"]),
        ("{k: v for k, v in event['nested'].items()}", {"x": 1}),
        ("sum(x for x in range(5))", 10),
        ("sorted({3, 1, 2})", [1, 2, 3]),
        ("max(event['n'], 10) if meta['kafka_partition'] > 2 else 0", 10),
        ("f\"{event['level']}:{meta['class']}\"", "error:ops"),
        ("event['msg'][:4]", "Disk"),
        ("isinstance(event['n'], int) and event['nested'] is not None", True),
        ("round(2.567, 1)", 2.6),
        ("str(event['n']) + str(abs(-1))", "71"),
    ],
)
def test_allowed_expressions_evaluate(text: str, expected: Any) -> None:
    assert compile_expr(text)(EVENT, META) == expected


def test_compiled_once_and_called_many_times() -> None:
    fn = compile_expr("event['n'] > 2")
    assert [fn({"n": n}, {}) for n in range(5)] == [False, False, False, True, True]


def test_other_names() -> None:
    fn = compile_expr("x + y", names=("x", "y"))
    assert fn(2, 3) == 5
    with pytest.raises(ExpressionError, match="unknown name 'event'"):
        compile_expr("event", names=("x",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "name '__import__' is not allowed"),
        ("event.__class__", "attribute '__class__' is not allowed"),
        ("event.get.__self__", "attribute '__self__' is not allowed"),
        ("[c for c in ().__class__.__bases__]", "attribute '__bases__' is not allowed"),
        ("open('x')", "unknown name 'open' (available: event, meta)"),
        ("getattr(event, 'x')", "unknown name 'getattr' (available: event, meta)"),
        ("eval('1')", "unknown name 'eval' (available: event, meta)"),
        ("_hr_pow(2, 3)", "name '_hr_pow' is not allowed"),
        ("lambda: 1", "Lambda is not allowed in expressions"),
        ("(lambda: 1)()", "only builtins and value methods may be called"),
        ("(x := 1)", "NamedExpr is not allowed in expressions"),
        ("event['__dict__']", "dunder strings are not allowed"),
        ("len(*event)", "Starred is not allowed in expressions"),
        ("event['a'](1)", "only builtins and value methods may be called"),
        ("event[", "invalid expression: '[' was never closed"),
        ("event ==", "invalid expression: invalid syntax"),
        ("import os", "invalid expression: invalid syntax"),
        ("x = 1", "invalid expression: invalid syntax"),
        ("", "expression is empty"),
        ("   ", "expression is empty"),
        pytest.param("1 + " * 5000 + "1", "expression is longer than 10000 characters", id="too-long"),
    ],
)
def test_forbidden_expressions_raise(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expr(text)
    assert str(info.value) == message
    assert info.value.text == text  # the loader finds the offending value by its text


def test_only_listed_methods() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expr("event.pop('level')")
    message = str(info.value)
    assert message.startswith("attribute 'pop' is not allowed (methods: ")
    assert "get" in message.split("(methods: ")[1].rstrip(")").split(", ")


def test_error_column_points_into_the_expression() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expr("event['a'] and open('x')")
    assert info.value.col == 16


@pytest.mark.parametrize(
    "text",
    [
        "9**9**9",
        "'a' * 10**10",
        "10**10 * 'a'",
        "[0] * 10**9",
        "2 ** 1000",
        "((9**256)**256)**256",
        "[z * z for z in [(10**255) ** 100]]",
        "1 << 10**6",
        pytest.param("(1 << 4000)" + " << 4000" * 25, id="chained-shifts"),
    ],
)
def test_exploding_arithmetic_overflows_quickly(text: str) -> None:
    fn = compile_expr(text)  # allowed at compile time: bounded when run
    start = time.monotonic()
    with pytest.raises(OverflowError):
        fn({}, {})
    assert time.monotonic() - start < 1.0


def test_bounded_arithmetic_still_works() -> None:
    assert compile_expr("2 ** 256 > 0 and 'ab' * 1000 != '' and (1 << 4096) > 0 and 0 ** 1000 == 0")({}, {}) is True
    assert compile_expr("(-1) ** 1001")({}, {}) == -1
    assert compile_expr("2 ** -2")({}, {}) == 0.25


def test_runtime_errors_propagate_to_the_operator() -> None:
    fn = compile_expr("event['missing']")
    with pytest.raises(KeyError):
        fn({}, {})


def test_no_builtins_reachable() -> None:
    fn = compile_expr("len(event)")
    assert fn.__globals__["__builtins__"] == {}

"""``compile_expr``: the allow-listed Python expressions of ``where:``, ``routes:`` and ``set:``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from headrace.contract.expr import ExpressionError, compile_expr

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
        ("[sum(x for x in event) for sum in [list]]", "name 'sum' cannot be rebound"),  # would skip the guard of sum's elements
        ("[f('a', 'b' * 1000) for f in [event['s'].replace]]", "method 'replace' may only be called, not taken as a value"),
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


def _isolated(text: str, event: dict[str, Any], conn: Any) -> None:
    import resource

    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vsz + (512 << 20), resource.RLIM_INFINITY))  # an unbounded result fails here, not on the host
    t0 = time.monotonic()
    try:
        compile_expr(text)(event, {})
        outcome = ("ok", "")
    except BaseException as exc:  # what the operator would send to err
        outcome = (type(exc).__name__, str(exc)[:200])
    conn.send((*outcome, time.monotonic() - t0))


def evaluate_isolated(text: str, event: dict[str, Any], timeout: float = 10.0) -> tuple[str, str, float]:
    """(exception type or "ok", message, seconds) of one evaluation in a child process with 512 MiB
    of address space to spare and ``timeout`` seconds: an unbounded evaluation fails the test
    (MemoryError, or "timeout") instead of taking the machine down."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated, args=(text, event, child))
    proc.start()
    try:
        if parent.poll(timeout):
            result: tuple[str, str, float] = parent.recv()
            return result
        return ("timeout", f"still running after {timeout}s", timeout)
    finally:
        proc.kill()
        proc.join()


BIG_LIST = list(range(10_000))

# event data that made an allowed expression take unbounded memory or time (issue 12, item 17)
HOSTILE_DATA = [
    pytest.param("event['id'] % 10", {"id": "%900000000d"}, "format width or precision 900000000", id="percent-width"),
    pytest.param("event['f'] % (event['w'], 1)", {"f": "%*d", "w": 900_000_000}, "format width or precision 900000000", id="percent-star"),
    pytest.param("event['f'] % event", {"f": "%(x).900000000f", "x": 1.5}, "format width or precision 900000000", id="percent-mapping"),
    pytest.param("f\"{event['s']:>{event['w']}}\"", {"s": "a", "w": 900_000_000}, "format width or precision", id="fstring-width"),
    pytest.param("f\"{event['x']:.{event['p']}f}\"", {"x": 1.5, "p": 100_000_000}, "format width or precision", id="fstring-precision"),
    pytest.param("event['s'].replace('a', event['t'])", {"s": "a" * 100_000, "t": "b" * 100_000}, "replace would make", id="replace"),
    pytest.param("event['s'].replace('', event['t'])", {"s": "a" * 100_000, "t": "b" * 100_000}, "replace would make", id="replace-empty"),
    pytest.param("event['sep'].join(event['parts'])", {"sep": "x" * 1_000_000, "parts": ["a"] * 1000}, "join would make", id="join"),
    pytest.param("sum(range(event['n']))", {"n": 10**18}, "range of", id="range-sum"),
    pytest.param("any(x < 0 for x in range(event['n']))", {"n": 10**18}, "range of", id="range-loop"),
    pytest.param("len([1 for a in event['l'] for b in event['l']])", {"l": BIG_LIST}, "more than 1048576 steps", id="nested-loops"),
    pytest.param("len([event['s'] + x for x in event['l']])", {"s": "s" * 1_000_000, "l": ["x"] * 1000}, "made more than 64 MiB",
                 id="loop-concat"),
    pytest.param("len([[event['s'].upper()] for x in event['l']])", {"s": "s" * 1_000_000, "l": BIG_LIST}, "made more than 64 MiB",
                 id="loop-nested-copy"),
    pytest.param("sum(x in event['l'] for x in event['l'] + event['l'])", {"l": list(range(30_000))}, "ran longer than 1s",
                 id="loop-quadratic-time"),
    pytest.param("len(sum(event['l'], []))", {"l": [[1]] * 100_000}, "adds numbers only", id="sum-of-lists"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "event", "message"), HOSTILE_DATA)
def test_event_data_cannot_make_an_expression_unbounded(text: str, event: dict[str, Any], message: str) -> None:
    kind, got, seconds = evaluate_isolated(text, event)
    assert kind in ("OverflowError", "TypeError") and message in got, (kind, got)
    assert seconds < 2.5, seconds


@pytest.mark.parametrize(
    ("text", "event", "expected"),
    [
        ("event['f'] % (event['n'], 'x')", {"f": "%05d|%-3s|%%", "n": 42}, "00042|x  |%"),
        ("event['f'] % event", {"f": "%(n)3d %(s)s", "n": 7, "s": "x"}, "  7 x"),
        ("event['n'] % 7", {"n": 50}, 1),
        ("f\"{event['x']:>8.2f}|{event['s']!r:^7}|{event['n']:,}\"", {"x": 3.14159, "s": "ab", "n": 1234567}, "    3.14| 'ab'  |1,234,567"),
        ("event['s'].replace('a', 'bb', 1)", {"s": "aaa"}, "bbaa"),
        ("'-'.join(str(x) for x in event['l'])", {"l": [1, 2, 3]}, "1-2-3"),
        ("sum(event['l'], 0.5)", {"l": [1, 2]}, 3.5),
        ("[t.upper() for t in event['l'] if t]", {"l": ["a", "", "b"]}, ["A", "B"]),
        ("{k: len(v) for k, v in event['d'].items()}", {"d": {"a": "xy", "b": ""}}, {"a": 2, "b": 0}),
        ("sum(1 for i in range(event['n']))", {"n": 100_000}, 100_000),
    ],
)
def test_bounded_operations_still_give_python_results(text: str, event: dict[str, Any], expected: Any) -> None:
    fn = compile_expr(text)
    assert fn(event, {}) == expected
    assert fn(event, {}) == expected  # the budget is per evaluation, not used up by the first


def test_budget_is_per_evaluation() -> None:
    fn = compile_expr("len([x for x in event['l']])")
    event = {"l": list(range(600_000))}  # more than half of the steps allowed in one evaluation
    assert [fn(event, {}) for _ in range(3)] == [600_000] * 3


def test_expressions_without_loops_are_compiled_as_written() -> None:
    fn = compile_expr("event['level'] != 'debug' and meta.get('x') is None")
    assert fn.__name__ == "<lambda>"  # no wrapper: a plain filter costs what it did
    assert compile_expr("[x for x in event]").__name__ == "evaluate"

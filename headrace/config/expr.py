"""Python expressions over ``event`` and ``meta``, compiled once against an allow-listed AST.

The config is trusted like code, but expressions are still limited: no imports, no
dunder access, no calls except to a fixed set of builtins and value methods, and
arithmetic that could explode (``9**9**9``, ``"a" * 10**12``) is bounded at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

MAX_POW_EXPONENT = 256
MAX_SEQ_REPEAT = 1_000_000
MAX_INT_BITS = 100_000  # bounds integers built by repeated **, * and << (e.g. ((9**256)**256)**256)

_SAFE_FUNCS: dict[str, Any] = {
    "len": len, "str": str, "int": int, "float": float, "bool": bool, "abs": abs,
    "min": min, "max": max, "round": round, "any": any, "all": all, "sorted": sorted,
    "list": list, "dict": dict, "set": set, "tuple": tuple, "sum": sum, "isinstance": isinstance,
    "range": range, "enumerate": enumerate, "zip": zip,
}  # fmt: skip
_SAFE_METHODS = frozenset(
    [
        "get", "keys", "values", "items", "startswith", "endswith", "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit",
        "replace", "find", "count", "join", "isdigit", "isalpha", "isalnum", "index", "title", "casefold", "partition",
    ]
)  # fmt: skip
_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp,
    ast.Name, ast.Load, ast.Store, ast.Constant, ast.Subscript, ast.Slice, ast.Attribute, ast.Call,
    ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
    ast.comprehension, ast.JoinedStr, ast.FormattedValue, ast.keyword,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.Invert, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot,
)  # fmt: skip


class ExpressionError(ValueError):
    """An expression that is not allowed or does not parse; ``col`` is 1-based within ``text``."""

    def __init__(self, message: str, col: int = 1, text: str = "") -> None:
        super().__init__(message)
        self.col = col
        self.text = text  # the expression, so that the config loader can point at it


def _too_big(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise OverflowError(f"the result would have more than {MAX_INT_BITS} bits")


def _safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > MAX_POW_EXPONENT and isinstance(a, (int, float)) and abs(a) > 1:
        raise OverflowError(f"exponent {b} is larger than {MAX_POW_EXPONENT}")
    if isinstance(a, int) and isinstance(b, int) and b > 0:
        _too_big(a.bit_length() * b)
    return a**b


def _safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and n * max(len(seq), 1) > MAX_SEQ_REPEAT:
            raise OverflowError(f"repeat of {n} exceeds {MAX_SEQ_REPEAT} items")
    if isinstance(a, int) and isinstance(b, int):
        _too_big(a.bit_length() + b.bit_length())
    return a * b


def _safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > 4096:
        raise OverflowError(f"shift by {b} is larger than 4096")
    if isinstance(a, int) and isinstance(b, int) and b > 0:
        _too_big(a.bit_length() + b)
    return a << b


_GUARDS = {ast.Pow: "_hr_pow", ast.Mult: "_hr_mul", ast.LShift: "_hr_lshift"}


class _Guard(ast.NodeTransformer):
    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = _GUARDS.get(type(node.op))
        if name is None:
            return node
        return ast.copy_location(ast.Call(ast.Name(name, ast.Load()), [node.left, node.right], []), node)


def _check(tree: ast.AST, names: frozenset[str]) -> None:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    bound.add(target.id)
    for node in ast.walk(tree):
        col = getattr(node, "col_offset", 0) + 1
        if not isinstance(node, _ALLOWED_NODES):
            raise ExpressionError(f"{type(node).__name__} is not allowed in expressions", col)
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ExpressionError(f"name '{node.id}' is not allowed", col)
        if isinstance(node, ast.Name) and node.id not in names and node.id not in _SAFE_FUNCS and node.id not in bound:
            raise ExpressionError(f"unknown name '{node.id}' (available: {', '.join(sorted(names))})", col)
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise ExpressionError(f"attribute '{node.attr}' is not allowed", col)
            if node.attr not in _SAFE_METHODS:
                raise ExpressionError(f"attribute '{node.attr}' is not allowed (methods: {', '.join(sorted(_SAFE_METHODS))})", col)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("__"):
            raise ExpressionError("dunder strings are not allowed", col)
        if isinstance(node, ast.Call) and not isinstance(node.func, (ast.Name, ast.Attribute)):
            raise ExpressionError("only builtins and value methods may be called", col)


def compile_expr(text: str, names: tuple[str, ...] = ("event", "meta")) -> Callable[..., Any]:
    """Compile ``text`` to a function of ``names``; raises ExpressionError when not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("expression is empty", 1, text if isinstance(text, str) else "")
    if len(text) > 10_000:
        raise ExpressionError("expression is longer than 10000 characters", 1, text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression: {exc.msg}", exc.offset or 1, text) from None
    try:
        _check(tree, frozenset(names))
    except ExpressionError as exc:
        exc.text = text
        raise
    tree = ast.fix_missing_locations(_Guard().visit(tree))
    lam = ast.Expression(
        ast.Lambda(
            ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in names], kwonlyargs=[], kw_defaults=[], defaults=[]),
            tree.body,
        )
    )
    code = compile(ast.fix_missing_locations(lam), "<expr>", "eval")
    env: dict[str, Any] = {"__builtins__": {}, **_SAFE_FUNCS, "_hr_pow": _safe_pow, "_hr_mul": _safe_mul, "_hr_lshift": _safe_lshift}
    fn: Callable[..., Any] = eval(code, env)  # the AST was allow-listed above
    return fn

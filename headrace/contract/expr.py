"""Python expressions over ``event`` and ``meta``, compiled once against an allow-listed AST.

The config is trusted like code, but expressions are still limited: no imports, no
dunder access, no calls except to a fixed set of builtins and value methods. What event
data could blow up (``9**9**9``, ``"a" * n``, ``"%900000000d" % 1``, ``range(10**18)``, a
comprehension over a large list) is bounded at run time: the AST is rewritten to call the
guards of ``headrace.contract.expr_bounds``. Expressions without those operators and loops
are compiled as written, so they cost nothing extra.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from headrace.contract import expr_bounds as bounds

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


_BINOP_GUARDS = {ast.Pow: "_hr_pow", ast.Mult: "_hr_mul", ast.LShift: "_hr_lshift", ast.Mod: "_hr_mod"}
_METHOD_GUARDS = {"replace": "_hr_replace", "join": "_hr_join"}
_CONSUMERS = frozenset({"any", "all", "sum", "min", "max"})  # builtins that keep none (or one) of the elements they are given
_GUARDS: dict[str, Any] = {
    "_hr_pow": bounds.safe_pow, "_hr_mul": bounds.safe_mul, "_hr_lshift": bounds.safe_lshift, "_hr_mod": bounds.safe_mod,
    "_hr_format": bounds.safe_format, "_hr_replace": bounds.safe_replace, "_hr_join": bounds.safe_join,
    "range": bounds.safe_range, "sum": bounds.safe_sum,
}  # fmt: skip


def _call(name: str, args: list[ast.expr], like: ast.AST, keywords: list[ast.keyword] | None = None) -> ast.Call:
    return ast.copy_location(ast.Call(ast.Name(name, ast.Load()), args, keywords or []), like)


class _Guard(ast.NodeTransformer):
    """Rewrites what could grow without bound into calls of the guards; ``loops``: whether there are comprehensions."""

    def __init__(self) -> None:
        self.loops = False

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        name = _BINOP_GUARDS.get(type(node.op))
        return node if name is None else _call(name, [node.left, node.right], node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        self.generic_visit(node)
        if node.format_spec is None:  # no width or precision: as long as the value's str or repr
            return node
        value = _call("_hr_format", [node.value, ast.Constant(node.conversion), node.format_spec], node)
        return ast.copy_location(ast.FormattedValue(value, -1, None), node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in _CONSUMERS and node.args and isinstance(node.args[0], ast.GeneratorExp):
            node.args[0].consumed = True  # type: ignore[attr-defined]  # each element is dropped once looked at: only steps count
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr in _METHOD_GUARDS:
            return _call(_METHOD_GUARDS[node.func.attr], [node.func.value, *node.args], node, node.keywords)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        self.loops = True
        node.iter = _call("_hr_iter", [node.iter], node.iter)
        return node

    def _made(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> ast.AST:
        self.generic_visit(node)
        if not getattr(node, "consumed", False):
            node.elt = _call("_hr_made", [node.elt], node.elt)
        return node

    visit_ListComp = visit_SetComp = visit_GeneratorExp = _made

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        self.generic_visit(node)
        node.key = _call("_hr_made", [node.key], node.key)
        node.value = _call("_hr_made", [node.value], node.value)
        return node


def _check(tree: ast.AST, names: frozenset[str]) -> None:
    bound: set[str] = set()
    called: set[int] = set()  # attributes that are called right away (not taken as values)
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    if target.id in _SAFE_FUNCS:  # the guards rely on what these names are
                        raise ExpressionError(f"name '{target.id}' cannot be rebound", target.col_offset + 1)
                    bound.add(target.id)
        elif isinstance(node, ast.Call):
            called.add(id(node.func))
    for node in ast.walk(tree):
        col = getattr(node, "col_offset", 0) + 1
        if isinstance(node, ast.Attribute) and node.attr in _METHOD_GUARDS and id(node) not in called:
            raise ExpressionError(f"method '{node.attr}' may only be called, not taken as a value", col)
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
    guard = _Guard()
    tree = ast.fix_missing_locations(guard.visit(tree))
    lam = ast.Expression(
        ast.Lambda(
            ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in names], kwonlyargs=[], kw_defaults=[], defaults=[]),
            tree.body,
        )
    )
    code = compile(ast.fix_missing_locations(lam), "<expr>", "eval")
    env: dict[str, Any] = {"__builtins__": {}, **_SAFE_FUNCS, **_GUARDS}
    budget = bounds.Budget()
    env["_hr_iter"], env["_hr_made"] = budget.iterate, budget.made
    fn: Callable[..., Any] = eval(code, env)  # the AST was allow-listed above
    if not guard.loops:
        return fn
    start = budget.start

    def evaluate(*args: Any) -> Any:
        start()  # each evaluation gets the whole budget
        return fn(*args)

    return evaluate

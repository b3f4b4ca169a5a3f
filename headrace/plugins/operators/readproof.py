"""Whether a ``def`` stage provably only reads its event, found in its bytecode.

A stage proven here gets a read-only view of a JSON record on workers (no dict is built:
several times cheaper than decoding it), exactly as one declared ``readonly: true`` would,
with no hint. The proof accepts only code that cannot tell a view from a dict:

- the event (the first parameter, never reassigned) is used only as ``event[k]``,
  ``event.get(k[, default])``, ``k in event``, a truth test, ``len(event)``, iteration, or
  returned as it is;
- a value read from it (kept in a local or not) only in those same ways, compared (``==``,
  ``<``, ``is``...) with a constant scalar (a container never equals one, so a view and a list
  agree), or stored into ``meta[...]`` (a view stored there becomes a plain value at the latest
  when it crosses to the parent; the next fused stage reads it converted);
- everything else is refused: a call or an operator taking such a value (``f(event)``,
  ``event["n"] + 1``, an f-string), an attribute, a store into it, returning a part of it, a
  closure over it, ``try`` blocks, code reaching its own frame, and any instruction not listed.

A stage that also sets top-level fields of its event with constant string keys
(``event["seen"] = True``, ``event["h"] = event.get("a")``) and does nothing else to it is
proven an *appender* (``Proof.appends``): on workers it gets the view wrapped in
``headrace.contract.patch.Patch``, which keeps those fields aside, and its record leaves as its
original bytes with the new fields spliced in before the closing brace (a field the record had
already, or a value the codec cannot write alone, makes the worker decode and encode the record
whole, as for any writer). The event must not escape into meta then (it would be the wrapper).

An ``async def`` stage is read the same way (``await`` of anything but the event or a value from
it); a proof that it only reads lets what it returns keep its bytes. A stage that never touches
the event at all (``Proof.untouched``: it is only returned) needs no decoded value on the loop.

Refusal is not an error: the stage then gets tracked dicts (``headrace.contract.tracked``).
Only CPython 3.11 bytecode is read; on another version nothing is proven.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import sys
from typing import Any

# abstract values on the simulated stack
CLEAN, CONST, CTUPLE, DERIVED, ROOT, META, NULL, SELF = "clean", "const", "ctuple", "derived", "root", "meta", "null", "self"
ROOTISH = "root?"  # the event or a clean value (merged branches of ``event if c else None``)
_TAINTED = (DERIVED, ROOT, ROOTISH)
_SCALARS = (str, int, float, bool, type(None), bytes)
_READ_METHODS = frozenset({"get"})
_READ_BUILTINS = frozenset({"len", "bool"})
# relaxed mode: builtins and methods that read their arguments and make new values, never changing them
_PURE_BUILTINS = frozenset({"str", "int", "float", "abs", "round", "min", "max", "sorted", "sum", "any", "all", "tuple", "list", "dict",
                            "set", "frozenset", "repr", "hash", "isinstance", "ord", "chr", "hex", "oct", "bin", "divmod", "pow", "ascii",
                            "format"})  # fmt: skip
_PURE_METHODS = frozenset({"lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith",
                           "replace", "find", "rfind", "index", "rindex", "count", "join", "format", "encode", "decode", "title",
                           "capitalize", "casefold", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric",
                           "isdecimal", "zfill", "center", "ljust", "rjust", "partition", "rpartition", "removeprefix", "removesuffix",
                           "swapcase", "expandtabs", "keys", "values", "items", "get", "copy", "hex", "bit_length", "is_integer"})  # fmt: skip
_INPLACE = 13  # BINARY_OP's in-place operators (NB_INPLACE_ADD and after) in CPython 3.11
_FRAME_ACCESS = frozenset({"locals", "vars", "eval", "exec", "_getframe", "currentframe", "stack", "f_locals", "getframeinfo", "globals"})
_NO_STACK = frozenset({"RESUME", "NOP", "PRECALL", "KW_NAMES", "EXTENDED_ARG", "CACHE"})
_COND_JUMPS = frozenset({"POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_FALSE", "POP_JUMP_BACKWARD_IF_TRUE",
                         "POP_JUMP_FORWARD_IF_NONE", "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_BACKWARD_IF_NONE",
                         "POP_JUMP_BACKWARD_IF_NOT_NONE"})  # fmt: skip
_JUMPS = frozenset({"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT"})
_BUILDS = {"BUILD_TUPLE": 1, "BUILD_LIST": 1, "BUILD_SET": 1, "BUILD_STRING": 1, "BUILD_MAP": 2}


class _Refused(Exception):
    pass


class Proof:
    """The result: whether the stage only reads, and whether it stores read values into meta."""

    __slots__ = ("appends", "meta_views", "plain", "reads_only", "untouched")

    def __init__(self, reads_only: bool, meta_views: bool = False, appends: bool = False, plain: bool = False, untouched: bool = False) -> None:
        self.reads_only = reads_only
        self.meta_views = meta_views
        self.appends = appends  # reads, and sets top-level fields with constant string keys (then reads_only is False)
        self.plain = plain  # proven only if what it reads are plain copies (a Patch that converts views): implies appends
        # never looks at the event at all: only returns it (or something else); it needs no decoded value (implies reads_only)
        self.untouched = untouched


def prove(fn: Any, relaxed: bool = False) -> Proof:
    """Whether ``fn(event, meta)`` provably only reads ``event`` (see the module doc); ``relaxed``:
    failing that, whether it does if its reads are plain copies (``Proof.plain``: a PlainPatch)."""
    if sys.version_info[:2] != (3, 11):
        return Proof(False)
    index = 0
    if inspect.ismethod(fn):
        fn, index = fn.__func__, 1
    if not inspect.isfunction(fn):
        return Proof(False)
    code = fn.__code__
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_ITERABLE_COROUTINE
                        | inspect.CO_ASYNC_GENERATOR):  # fmt: skip
        return Proof(False)
    if code.co_argcount < index + 2 or code.co_exceptiontable or code.co_cellvars or code.co_freevars:
        return Proof(False)
    if not _FRAME_ACCESS.isdisjoint(code.co_names):
        return Proof(False)
    event, meta = code.co_varnames[index], code.co_varnames[index + 1]
    try:
        return _Checker(fn, code, event, meta).run()
    except _Refused:
        if not relaxed:
            return Proof(False)
    try:  # values read as plain copies: more code is provable (a PlainPatch reads them so)
        return _Checker(fn, code, event, meta, relaxed=True).run()
    except _Refused:
        return Proof(False)


class _Checker:
    def __init__(self, fn: Any, code: Any, event: str, meta: str, relaxed: bool = False) -> None:
        # relaxed: values read from the event are plain copies (dicts, lists, scalars), so pure
        # operations may take them (calls of pure builtins and methods, arithmetic, f-strings,
        # comparisons); anything that could mutate one, alias it into the stage's own containers,
        # or tell a copy from the original (``is``) is still refused
        self.relaxed = relaxed
        self.globals = fn.__globals__
        self.ins = list(dis.get_instructions(code))
        self.event, self.meta = event, meta
        self.tainted: set[str] = set()  # locals that may hold a value read from the event
        self.meta_views = False
        self.appends = False  # a top-level field set with a constant string key
        self.root_escapes = False  # the event itself stored into meta (fine for a view, not for a Patch)
        self.touched = False  # the event (or a local holding it) taken by anything but ``return``
        self.prev: Any = None  # the instruction before the one being stepped

    def run(self) -> Proof:
        for _ in range(20):  # until the tainted locals (and whether meta holds read values) stop growing
            before = (set(self.tainted), self.meta_views)
            self._scan()
            if (self.tainted, self.meta_views) == before:
                if self.relaxed:
                    return Proof(False) if self.root_escapes else Proof(False, self.meta_views, appends=True, plain=True)
                if self.appends:
                    return Proof(False) if self.root_escapes else Proof(False, self.meta_views, appends=True)
                return Proof(True, self.meta_views, untouched=not self.touched)
        return Proof(False)

    def _scan(self) -> None:
        states: dict[int, list[str]] = {}  # offset -> stack on entry (from a jump)
        stack: list[str] | None = []
        for _pass in range(2):  # a second pass sees the states backward jumps recorded
            stack = []
            for ins in self.ins:
                if ins.offset in states:
                    stack = list(states[ins.offset]) if stack is None else _merge(stack, states[ins.offset])
                if stack is None:
                    self.prev = ins
                    continue  # unreachable (after a return or a jump, and no jump lands here)
                stack = self._step(ins, stack, states)
                self.prev = ins

    def _jump(self, states: dict[int, list[str]], target: int, stack: list[str]) -> None:
        states[target] = list(stack) if target not in states else _merge(states[target], stack)

    def _step(self, ins: Any, stack: list[str], states: dict[int, list[str]]) -> list[str] | None:
        op, arg = ins.opname, ins.arg

        def pop() -> str:
            if not stack:
                raise _Refused
            v = stack.pop()
            if v in _TAINTED:
                self.touched = True
            return v

        if op in _NO_STACK:
            return stack
        if op == "LOAD_FAST":
            name = ins.argval
            stack.append(ROOT if name == self.event else META if name == self.meta else DERIVED if name in self.tainted else CLEAN)
        elif op == "LOAD_CONST":
            v = ins.argval
            scalars = isinstance(v, tuple) and all(isinstance(x, _SCALARS) for x in v)
            stack.append(CONST if isinstance(v, _SCALARS) else CTUPLE if scalars else CLEAN)
        elif op == "LOAD_GLOBAL":
            if arg & 1:
                stack.append(NULL)
            stack.append("g:" + ins.argval)
        elif op == "STORE_FAST":
            v = pop()
            if ins.argval in (self.event, self.meta):
                raise _Refused
            if v in _TAINTED:
                self.tainted.add(ins.argval)
            elif v not in (CLEAN, CONST, CTUPLE) and not v.startswith("g:"):
                raise _Refused
        elif op == "POP_TOP":
            pop()
        elif op == "PUSH_NULL":
            stack.append(NULL)
        elif op == "SWAP":
            if len(stack) < arg:
                raise _Refused
            stack[-1], stack[-arg] = stack[-arg], stack[-1]
        elif op == "COPY":
            if len(stack) < arg:
                raise _Refused
            stack.append(stack[-arg])
        elif op == "BINARY_SUBSCR":
            key, container = pop(), pop()
            if key in (ROOT, ROOTISH) or (key == DERIVED and not self.relaxed):
                raise _Refused
            # once a read value is stored into meta, what is read back from meta may be one too
            stack.append(DERIVED if container in _TAINTED or (container == META and self.meta_views) else CLEAN)
        elif op == "STORE_SUBSCR":
            key, container, value = pop(), pop(), pop()
            if container == ROOT and key == CONST and value not in (ROOT, ROOTISH):
                prev = self.prev  # the key: a string constant loaded right before
                if prev is None or prev.opname != "LOAD_CONST" or type(prev.argval) is not str:
                    raise _Refused
                self.appends = True
                return stack
            if key in _TAINTED or container in _TAINTED:
                raise _Refused
            if value in (ROOT, ROOTISH):
                self.root_escapes = True
            if value in _TAINTED:
                if container != META:
                    raise _Refused
                self.meta_views = True
        elif op == "COMPARE_OP" or op == "IS_OP":
            b, a = pop(), pop()
            # relaxed: copies compare equal as the originals do, but are never the same object
            if ((a in _TAINTED and b != CONST) or (b in _TAINTED and a != CONST)) and (not self.relaxed or op == "IS_OP" or {a, b} & {ROOT, ROOTISH}):
                raise _Refused
            stack.append(CLEAN)
        elif op == "CONTAINS_OP":
            container, item = pop(), pop()
            # a view is in a tuple of scalars exactly when a list would be: never (relaxed: copies are what dicts hold)
            if item in _TAINTED and container != CTUPLE and (not self.relaxed or item != DERIVED):
                raise _Refused
            stack.append(CLEAN)
        elif op == "UNARY_NOT":
            pop()
            stack.append(CLEAN)
        elif op in _COND_JUMPS:
            pop()
            self._jump(states, ins.argval, stack)
        elif op in ("JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP"):
            self._jump(states, ins.argval, stack)
            pop()
        elif op in _JUMPS:
            self._jump(states, ins.argval, stack)
            return None
        elif op == "RETURN_VALUE":
            if not stack:
                raise _Refused
            # the event returned as it is does not touch it (nor does the event or a value not read from it:
            # a condition choosing between them was popped, and counted, where it was tested)
            if stack.pop() not in (ROOT, ROOTISH, CLEAN, CONST, CTUPLE):
                raise _Refused
            return None
        elif op == "RETURN_GENERATOR":  # an async def's start: its coroutine object, popped next
            stack.append(CLEAN)
        elif op == "GET_AWAITABLE":  # ``await x``: x must not be the event or a part of it
            if pop() in _TAINTED:
                raise _Refused
            stack.append(CLEAN)
        elif op == "SEND":  # the await loop: done -> the result replaces the awaitable (at the target)
            pop()
            if not stack:
                raise _Refused
            self._jump(states, ins.argval, [*stack[:-1], CLEAN])
            stack.append(CLEAN)  # not done: what it yields, then YIELD_VALUE hands it out and takes what is sent
        elif op == "YIELD_VALUE":
            pop()
            stack.append(CLEAN)
        elif op == "LOAD_METHOD":
            receiver = pop()
            if receiver in _TAINTED:
                if ins.argval in _READ_METHODS:
                    stack.extend(("m:read", SELF))
                elif self.relaxed and receiver == DERIVED and ins.argval in _PURE_METHODS:
                    stack.extend(("m:pure", SELF))
                else:
                    raise _Refused
            elif receiver == CONST and self.relaxed and ins.argval in _PURE_METHODS:  # ",".join(event["tags"])
                stack.extend(("m:pure", SELF))
            elif receiver == META:
                stack.extend(("m:meta", SELF))  # its result counts as read from the event once meta holds such values
            else:
                stack.extend(("m:other", SELF))
        elif op == "LOAD_ATTR":
            if pop() in _TAINTED:
                raise _Refused
            stack.append(CLEAN)
        elif op == "CALL":
            args = [pop() for _ in range(arg)]
            callee, below = pop(), pop()
            tainted_args = any(a in _TAINTED for a in args)
            if self.meta_views and META in args:  # meta holding read values, handed to code that may write them
                raise _Refused
            if below == "m:read" and callee == SELF:
                if any(a in (ROOT, ROOTISH) for a in args) or (tainted_args and not self.relaxed):
                    raise _Refused
                stack.append(DERIVED)
            elif below == "m:pure" and callee == SELF:  # relaxed: a method that reads its receiver and arguments only
                if any(a in (ROOT, ROOTISH) for a in args):
                    raise _Refused
                stack.append(DERIVED)
            elif below == "m:meta" and callee == SELF and (tainted_args or self.meta_views):
                if ROOT in args or ROOTISH in args:
                    self.root_escapes = True
                if tainted_args:  # meta.update(x=event["a"]), meta.setdefault(k, event["a"]): a read value into meta
                    self.meta_views = True
                stack.append(DERIVED)
            elif tainted_args:
                name = callee[2:] if callee.startswith("g:") else None
                if below != NULL or name in self.globals or getattr(builtins, name or "", None) is None:
                    raise _Refused
                if name in _READ_BUILTINS:
                    stack.append(CLEAN)
                elif self.relaxed and name in _PURE_BUILTINS and not any(a in (ROOT, ROOTISH) for a in args):
                    stack.append(DERIVED)  # may hold parts of the copies (sorted, tuple, min...)
                else:
                    raise _Refused
            else:
                stack.append(CLEAN)
        elif op == "GET_ITER":
            stack.append("i:" + pop())
        elif op == "FOR_ITER":
            it = stack[-1] if stack else None
            if it is None or not it.startswith("i:"):
                raise _Refused
            exhausted = stack[:-1]
            self._jump(states, ins.argval, exhausted)
            stack.append(DERIVED if it[2:] in _TAINTED else CLEAN)
        elif op == "UNPACK_SEQUENCE":
            v = pop()
            if v in (ROOT, ROOTISH) or (v == DERIVED and not self.relaxed):
                raise _Refused
            stack.extend([v if v == DERIVED else CLEAN] * arg)
        elif op == "FORMAT_VALUE" and self.relaxed:
            if arg & 0x04 and pop() in _TAINTED:  # a format spec on the stack
                raise _Refused
            v = pop()
            if v in (ROOT, ROOTISH):  # the wrapper's text is not a dict's
                raise _Refused
            stack.append(DERIVED if v == DERIVED else CLEAN)
        elif op == "BUILD_STRING" and self.relaxed:
            parts = [pop() for _ in range(arg)]
            if any(x in (ROOT, ROOTISH) for x in parts):
                raise _Refused
            stack.append(DERIVED if DERIVED in parts else CLEAN)
        elif op in _BUILDS:
            for _ in range(arg * _BUILDS[op]):
                if pop() in _TAINTED:
                    raise _Refused
            stack.append(CLEAN)
        elif op == "BINARY_OP":
            b, a = pop(), pop()
            if a in _TAINTED or b in _TAINTED:
                # relaxed: a new value from copies; never in place (``x += [1]`` on a list read from the event)
                if not self.relaxed or {a, b} & {ROOT, ROOTISH} or (arg >= _INPLACE and a == DERIVED):
                    raise _Refused
                stack.append(DERIVED)
            else:
                stack.append(CLEAN)
        else:
            raise _Refused  # not listed: not proven
        return stack


def _merge(a: list[str], b: list[str]) -> list[str]:
    if len(a) != len(b):
        raise _Refused
    out = []
    for x, y in zip(a, b, strict=True):
        if x == y:
            out.append(x)
        elif x in (CLEAN, CONST, CTUPLE) and y in (CLEAN, CONST, CTUPLE):
            out.append(CLEAN)
        elif {x, y} <= {CLEAN, CONST, CTUPLE, ROOT, ROOTISH}:
            out.append(ROOTISH)
        elif {x, y} <= {CLEAN, CONST, CTUPLE, DERIVED, ROOT, ROOTISH}:
            out.append(DERIVED)  # either may be read from the event (not the event itself)
        else:
            raise _Refused
    return out

"""Reference docs generated from the declarations (``make docs``, ``python -m headrace.docs``).

Each entry of ``REFERENCES`` maps a file under ``docs/reference/`` to the function that
renders it; add a reference by adding an entry. ``--check`` writes nothing and exits 1
when a committed file differs from what would be generated (for CI).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _metrics() -> str:
    from headrace.metrics.defs import reference_markdown

    return reference_markdown()


def _cli() -> str:
    from headrace.cli.main import reference_markdown

    return reference_markdown()


def _tests() -> str:
    from headrace.testing.cases import reference_markdown

    return reference_markdown()


def type_text(field: Any) -> str:
    """A field's type as a user writes it: `duration (...)`, `size (...)`, `int`, `Literal['a', 'b']` ..."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    examples = extra.get("examples") or []
    if "250ms" in examples:
        return "duration (`250ms`, `20s`, `1m`, or seconds)"
    if "64KiB" in examples:
        return "size (`4096`, `64KiB`, `16MiB`)"
    text = repr(field.annotation).replace("typing.", "")
    optional = " or null" if text.startswith("Optional[") or "None" in text else ""
    if "parse_duration" in text:
        return "duration (`250ms`, `20s`, `1m`, or seconds)" + optional
    if "parse_size" in text:
        return "size (`4096`, `64KiB`, `16MiB`)" + optional
    for noise in ("<class '", "'>", "NoneType"):
        text = text.replace(noise, "" if noise != "NoneType" else "None")
    return re.sub(r"\b(?:[a-z_]\w*\.)+([A-Z]\w*)", r"\1", text)  # headrace.testing.cases.Case -> Case


def default_text(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(object)"
        return f"`{value!r}`" if not hasattr(value, "model_dump") else "(see below)"
    return f"`{field.default!r}`"


def model_table(model: Any) -> str:
    """A markdown table of a pydantic model's fields: name, type, default, description."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        cells = [f"`{name}`", type_text(field), default_text(field), field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


KIND_TITLES = {"onramps": "onramp", "offramps": "offramp", "codecs": "codec", "preprocessors": "preprocessor",
               "postprocessors": "postprocessor", "operators": "operator"}  # fmt: skip
WHERE = {"onramps": "the onramp's `config:`", "offramps": "the offramp's `config:`", "codecs": "`codec:` options",
         "preprocessors": "`preprocessors: [{name: ..., ...}]`", "postprocessors": "`postprocessors: [{name: ..., ...}]`",
         "operators": "the node itself, beside `op:`"}  # fmt: skip


def module_doc(cls: Any) -> str:
    """The docstring of the module a plugin class lives in (its user documentation)."""
    module = sys.modules.get(cls.__module__) if cls.__module__ else None
    return ((module.__doc__ if module else None) or "").strip()


def _component(kind: str, name: str) -> Callable[[], str]:
    def render() -> str:
        from headrace import registry

        cls = registry.load(kind, name)  # type: ignore[arg-type]
        what = KIND_TITLES[kind]
        lines = [f"# {what} `{name}`", "", "Generated from the plugin's config model (`make docs`).", "", cls.summary or "", ""]
        doc = module_doc(cls)
        if doc:
            lines += [doc, ""]
        fields = getattr(cls, "Config", None)
        if fields is not None and fields.model_fields:
            lines += [f"## Settings ({WHERE[kind]})", "", model_table(fields)]
        else:
            lines += ["## Settings", "", "None.", ""]
        extra = {
            "onramps": f"Default preprocessors: {', '.join(f'`{p}`' for p in getattr(cls, 'default_preprocessors', ())) or 'none'}.",
            "offramps": f"Default postprocessors: {', '.join(f'`{p}`' for p in getattr(cls, 'default_postprocessors', ())) or 'none'}.",
            "operators": f"Placement: `{getattr(cls, 'default_placement', 'any')}`. Extra ports depend on the settings (see `headrace graph`).",
        }.get(kind)
        if extra:
            lines += [extra, ""]
        example = getattr(cls, "example", "")
        if example:
            lines += ["## Example", "", "```yaml", example, "```", ""]
        return "\n".join(lines)

    return render


def _config() -> str:
    from headrace.config.model import Config, DaemonConfig, MetricsConfig, OfframpConfig, OnrampConfig

    parts = ["# Config file reference", "", "Generated from `headrace/config/model.py` (`make docs`). The same model validates",
             "configs (`headrace check`) and produces the JSON Schema (`headrace schema`).", ""]  # fmt: skip
    for title, model in (("Top level", Config), ("`daemon:`", DaemonConfig), ("`daemon.metrics:`", MetricsConfig),
                         ("an onramp (`onramps.<id>:`)", OnrampConfig), ("an offramp (`offramps.<id>:`)", OfframpConfig)):  # fmt: skip
        parts += [f"## {title}", "", model_table(model)]
    from headrace.config.names import REFERENCE as PIPELINES

    parts += [PIPELINES, "## Components", ""]
    from headrace import registry

    for kind in registry.KINDS:
        names = sorted(registry.BUILTINS[kind])
        parts.append(f"- {kind}: " + ", ".join(f"[`{n}`]({kind}/{n}.md)" for n in names))
    return "\n".join(parts) + "\n"


def _tls() -> str:
    import headrace.plugins.tls as tls
    from headrace.plugins.onramps.http import HttpAuthConfig

    doc = (tls.__doc__ or "").strip()
    return "\n".join(["# TLS and credentials", "", "Generated from `headrace/plugins/tls.py` (`make docs`).", "", doc, "",
                      "## `tls:` (in the `config:` of a tcp or http onramp or offramp)", "", model_table(tls.TlsConfig),
                      "## `auth:` (in the `config:` of an http onramp)", "", model_table(HttpAuthConfig)])  # fmt: skip


def _references() -> dict[str, Callable[[], str]]:
    from headrace import registry

    refs: dict[str, Callable[[], str]] = {"reference/metrics.md": _metrics, "reference/config.md": _config, "reference/cli.md": _cli,
                                          "reference/tests.md": _tests, "reference/tls.md": _tls}  # fmt: skip
    for kind in registry.KINDS:
        for name in sorted(registry.BUILTINS[kind]):  # built-ins only: the output must not depend on what is installed
            refs[f"reference/{kind}/{name}.md"] = _component(kind, name)
    return refs


# file (relative to the docs folder) -> renderer; renderers import lazily so one broken reference does not hide the others
REFERENCES: dict[str, Callable[[], str]] = _references()


def default_docs_dir() -> Path:
    """``docs/`` of the source tree this package lives in."""
    return Path(__file__).resolve().parent.parent / "docs"


def generate() -> dict[str, str]:
    """Every reference: relative path -> text."""
    return {rel: render() for rel, render in REFERENCES.items()}


def stale(docs_dir: Path) -> list[str]:
    """References whose committed file is missing or differs from the generated text."""
    out = []
    for rel, text in generate().items():
        path = docs_dir / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(rel)
    return out


def write(docs_dir: Path) -> list[str]:
    """Write every reference that changed; returns the paths written."""
    written = []
    for rel, text in generate().items():
        path = docs_dir / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(rel)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headrace.docs", description="generate docs/reference/ from the declarations")
    p.add_argument("--docs-dir", type=Path, default=default_docs_dir(), help="the docs folder (default: the source tree's docs/)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a reference is out of date")
    args = p.parse_args(argv)
    if args.check:
        bad = stale(args.docs_dir)
        for rel in bad:
            print(f"{args.docs_dir / rel}: out of date; run `make docs`", file=sys.stderr)
        return 1 if bad else 0
    for rel in write(args.docs_dir):
        print(f"wrote {args.docs_dir / rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``headrace`` command line: run, check, test, graph, schema, top, plugins."""

from __future__ import annotations

import argparse
import json
import sys

from headrace import __version__
from headrace.daemon.logs import setup_logging
from headrace.errors import EX_CONFIG


def _check(args: argparse.Namespace) -> int:
    from headrace.config.errors import ConfigError
    from headrace.config.load import load_file

    try:
        graph = load_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    for src, port in graph.unlinked:
        comp = graph.components[src]
        if port != "err" and not (comp.plugin == "route" and port == "out"):  # route never uses out
            print(f"warning: port {src}/{port} is not linked; its events will be counted and dropped", file=sys.stderr)
    print(f"{args.config}: ok ({len(graph.of_kind('onramp'))} onramps, {len(graph.of_kind('node'))} nodes, {len(graph.of_kind('offramp'))} offramps)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from headrace.daemon.early import record_early_signals

    early = record_early_signals()  # before the heavy imports: a stop while starting drains, it does not kill
    from headrace.daemon.process import Daemon

    return Daemon(args.config, watch=args.watch, early=early).run()


def _graph(args: argparse.Namespace) -> int:
    from headrace.cli.render import to_dot, to_mermaid
    from headrace.config.errors import ConfigError
    from headrace.config.load import load_file

    try:
        graph = load_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    sys.stdout.write(to_dot(graph) if args.format == "dot" else to_mermaid(graph))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from headrace.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from headrace import registry

    for kind in registry.KINDS:
        print(f"{kind}:")
        for name in registry.names(kind):
            try:
                cls = registry.load(kind, name)
                summary = getattr(cls, "summary", "")
            except Exception as exc:  # a broken third-party plugin must not hide the others
                summary = f"(cannot load: {exc.__cause__ or exc})"
            print(f"  {name:<14} {summary}  [{registry.origin(kind, name)}]")
    return 0


def _test(args: argparse.Namespace) -> int:
    from headrace.testing.runner import run_config_tests

    return run_config_tests(args.config)


def _top(args: argparse.Namespace) -> int:
    from headrace.cli.top import run_top

    return run_top(args.url, args.interval, args.once)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headrace", description="declarative stream-processing daemon")
    p.add_argument("--version", action="version", version=f"headrace {__version__}")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("config")
    r.add_argument("--watch", action="store_true", help="reload when the config file changes")
    r.set_defaults(fn=_run)
    c = sub.add_parser("check", help="validate a config (exit 0, or 78 with file:line:col errors)")
    c.add_argument("config")
    c.set_defaults(fn=_check)
    t = sub.add_parser("test", help="run the config's unit tests")
    t.add_argument("config")
    t.set_defaults(fn=_test)
    g = sub.add_parser("graph", help="draw the graph")
    g.add_argument("config")
    g.add_argument("--format", choices=["dot", "mermaid"], default="dot")
    g.set_defaults(fn=_graph)
    s = sub.add_parser("schema", help="print the JSON Schema of the config")
    s.set_defaults(fn=_schema)
    top = sub.add_parser("top", help="live per-component rates from a running daemon")
    top.add_argument("url", nargs="?", default="http://127.0.0.1:9898")
    top.add_argument("--interval", type=float, default=1.0)
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.set_defaults(fn=_top)
    pl = sub.add_parser("plugins", help="list onramps, offramps, codecs, processors, operators")
    pl.set_defaults(fn=_plugins)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    rc: int = args.fn(args)
    return rc

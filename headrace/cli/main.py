"""``headrace`` command line: run, check, test, graph, schema, top, plugins."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

from headrace import __version__
from headrace.daemon.logs import setup_logging
from headrace.errors import EX_CONFIG

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
log = logging.getLogger("headrace.cli")

EPILOG = """\
Global options may come before or after the verb. Environment: HEADRACE_LOG_LEVEL and
HEADRACE_LOG_FORMAT set the defaults of --log-level and --log-format.
Exit codes: 0 ok, 1 runtime failure (or a test failed), 2 usage error, 78 invalid config."""


def _check(args: argparse.Namespace) -> int:
    from headrace.cli.check import run_check

    return run_check(args.configs, env_files=args.env_file, unit=args.unit, deny_warnings=args.deny_warnings, fmt=args.format)


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

    print(json.dumps(json_schema(args.target), indent=2))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from headrace.cli.plugins import run_plugins

    return run_plugins(args.name, args.format)


def _test(args: argparse.Namespace) -> int:
    from headrace.testing.runner import run_config_tests

    return run_config_tests(args.paths, names=args.name, junit_xml=args.junit_xml)


def _top(args: argparse.Namespace) -> int:
    from headrace.cli.top import run_top

    return run_top(args.url, args.interval, args.once)


def _tap(args: argparse.Namespace) -> int:
    from headrace.cli.tap import run_tap

    url, target = (args.url, args.target) if args.target is not None else ("http://127.0.0.1:9898", args.url)
    return run_tap(url, target, args.sample, args.limit, args.where, args.with_meta, args.format, args.record, args.max_rate,
                   args.token_file)  # fmt: skip


def _replay(args: argparse.Namespace) -> int:
    from headrace.cli.replay import run_replay

    return run_replay(args.file, args.url, args.into, args.where, args.rate, args.dry_run, args.token_file, args.config)


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise SystemExit(f"headrace: {name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _global_options(p: argparse.ArgumentParser, *, after_verb: bool) -> None:
    """The options every verb takes; after the verb they override the ones before it only when given."""
    level = _env_choice("HEADRACE_LOG_LEVEL", "info", LOG_LEVELS)
    fmt = _env_choice("HEADRACE_LOG_FORMAT", "text", LOG_FORMATS)
    p.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS if after_verb else fmt,
                   help=f"log lines as text (UTC ISO 8601 times) or one JSON object each (default: {fmt}; HEADRACE_LOG_FORMAT)")  # fmt: skip
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS if after_verb else level,
                   help=f"least severe level logged; debug shows the config as loaded: files, plugins, edges (default: {level}; "
                        "HEADRACE_LOG_LEVEL)")  # fmt: skip


def _version() -> str:
    return f"headrace {__version__} (Python {platform.python_version()}, {platform.python_implementation()}, {sys.platform})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headrace", description="declarative stream-processing daemon", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=_version())
    _global_options(p, after_verb=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, after_verb=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="VERB")

    def verb(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    r = verb("run", "run the daemon (Ctrl-C/SIGTERM drain; SIGHUP reloads)")
    r.add_argument("config", help="the config file")
    r.add_argument("--watch", action="store_true", help="reload when the config file or a stage module beside it changes")
    r.set_defaults(fn=_run)

    c = verb("check", "validate configs (exit 0, or 78 with file:line:col errors)", description="""\
validate configs without touching files, sockets or brokers. Errors and warnings are
printed as FILE:LINE:COL: message, in file order, with FILE as given. Exit 0 when every
config is valid, 78 otherwise.

  headrace check headrace.yaml
  headrace check 'conf.d/*.yaml' --deny-warnings --format json
  sudo headrace check --unit /etc/systemd/system/headrace.service /etc/headrace/headrace.yaml""")
    c.add_argument("configs", nargs="+", metavar="CONFIG", help="config files, or quoted globs such as 'conf.d/**/*.yaml'")
    c.add_argument("--deny-warnings", action="store_true", help="exit 78 when there is a warning (e.g. a port whose events are dropped)")
    c.add_argument("--format", choices=["text", "json"], default="text",
                   help="text lines on stderr (default), or one JSON document on stdout: {ok, files: [{file, ok, errors, warnings, ...}]}")  # fmt: skip
    c.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="read KEY=value lines for ${VAR} (systemd's EnvironmentFile= format); may be repeated; they override the environment")  # fmt: skip
    c.add_argument("--unit", metavar="UNIT_FILE",
                   help="use the environment this systemd unit (and its .d/*.conf drop-ins) gives the service instead of this shell's: "
                        "Environment=, EnvironmentFile=, StateDirectory= ($STATE_DIRECTORY) ...")  # fmt: skip
    c.set_defaults(fn=_check)

    t = verb("test", "run configs' unit tests (a tests: list, or NAME_test.yaml beside the config)")
    t.add_argument("paths", nargs="+", metavar="PATH", help="config files, or folders searched recursively for configs that have tests")
    t.add_argument("--name", action="append", default=[], metavar="TEXT",
                   help="run only the tests whose name contains TEXT or matches it as a shell pattern ('*errors*'); may be repeated")  # fmt: skip
    t.add_argument("--junit-xml", metavar="FILE", help="also write the results to FILE as JUnit XML (for CI)")
    t.set_defaults(fn=_test)

    g = verb("graph", "draw the graph of a config")
    g.add_argument("config", help="the config file")
    g.add_argument("--format", choices=["dot", "mermaid"], default="dot", help="Graphviz dot (default) or Mermaid")
    g.set_defaults(fn=_graph)

    s = verb("schema", "print the JSON Schema of the config (for editors; see docs/editors.md)")
    s.add_argument("--for", dest="target", choices=["config", "tests"], default="config",
                   help="config files (default), or test files (NAME_test.yaml)")  # fmt: skip
    s.set_defaults(fn=_schema)

    top = verb("top", "live per-component rates from a running daemon")
    top.add_argument("url", nargs="?", default="http://127.0.0.1:9898", help="the daemon's metrics address (default: %(default)s)")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between refreshes (default: %(default)s)")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.set_defaults(fn=_top)

    tap = verb("tap", "live events of one port of a running daemon (a loopback admin endpoint)")
    tap.add_argument("url", metavar="[URL] COMPONENT[/PORT]", help="the daemon's metrics address (default http://127.0.0.1:9898), then what to "
                     "tap: an onramp, node or offramp, and a port (default out; an offramp's in is what it is given)")
    tap.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    tap.add_argument("--sample", default="1", metavar="1/N", help="every N-th event (default: every one)")
    tap.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    tap.add_argument("--where", metavar="EXPR", help="only events for which this expression over event and meta is true")
    tap.add_argument("--with-meta", action="store_true", help="show each event's meta too")
    tap.add_argument("--format", choices=["json", "yaml", "pretty"], default="json", help="json lines (default), yaml documents, or indented JSON")
    tap.add_argument("--max-rate", type=float, metavar="N", help="look at no more than N sampled events a second (default 200, as vector tap; 0: no cap); "
                     "the rest are counted, so a tap stays cheap on a busy port")
    tap.add_argument("--record", metavar="FILE", help="write the tapped events (with their meta) as a headrace test case file instead of "
                     "showing them: injected where tapped, expecting as many; edit the expectation")
    tap.add_argument("--token-file", metavar="FILE", help="send the token in FILE (daemon.metrics.token) as Authorization: Bearer; "
                     "default: $HEADRACE_TOKEN when set")
    tap.set_defaults(fn=_tap)
    rp = verb("replay", "send dead letters (a with_meta err file) back through a running daemon or a one-shot run, once their cause "
              "is fixed")
    rp.add_argument("file", metavar="FILE|kafka://HOST:PORT/TOPIC", help="dead letters as an offramp with with_meta: true wrote them "
                    "(JSON of event and meta): a file of lines, or every record of a Kafka topic (read without a consumer group)")
    rp.add_argument("--url", default="http://127.0.0.1:9898", help="the daemon's metrics address (loopback, or with --token-file; "
                    "default http://127.0.0.1:9898)")
    rp.add_argument("--config", metavar="CONFIG", help="no running daemon: run this config here just for the replay (its onramps read "
                    "nothing, its pipelines and offramps run as under headrace run), drain it and exit; not with --url")
    rp.add_argument("--token-file", metavar="FILE", help="send the token in FILE (daemon.metrics.token) as Authorization: Bearer; "
                    "default: $HEADRACE_TOKEN when set")
    rp.add_argument("--into", metavar="ONRAMP|NODE", help="the onramp whose output they re-enter, or the first node of a chain whose queue "
                    "they enter (default: each one's meta.error.origin)")
    rp.add_argument("--where", metavar="EXPR", help="only dead letters for which this expression over event and meta is true")
    rp.add_argument("--rate", type=float, metavar="N", help="at most N records a second")
    rp.add_argument("--dry-run", action="store_true", help="say what would be replayed and skipped, send nothing")
    rp.set_defaults(fn=_replay)

    pl = verb("plugins", "list onramps, offramps, codecs, processors, operators; or show one plugin's settings")
    pl.add_argument("name", nargs="?", metavar="NAME", help="a plugin name, or KIND/NAME (onramp/file): show its settings")
    pl.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or JSON")
    pl.set_defaults(fn=_plugins)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    log.debug("%s; verb %s; log level %s", _version(), args.command, args.log_level)
    rc: int = args.fn(args)
    return rc


def reference_markdown() -> str:
    """docs/reference/cli.md: every verb's --help, as the command prints it (``make docs``)."""
    saved = {k: os.environ.pop(k, None) for k in ("COLUMNS", "HEADRACE_LOG_LEVEL", "HEADRACE_LOG_FORMAT")}
    os.environ["COLUMNS"] = "100"  # the same text whatever the terminal and the environment of whoever generates it
    try:
        top = parser()
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# Command line reference", "", "Generated from the command's own `--help` (`make docs`); "
                 "[cli.md](../cli.md) explains the verbs with examples.", "", "## headrace", "", "```", top.format_help().rstrip(), "```", ""]  # fmt: skip
        for name, verb in sub.choices.items():
            parts += [f"## headrace {name}", "", "```", verb.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        os.environ.pop("COLUMNS", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})

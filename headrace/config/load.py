"""YAML file -> validated model -> resolved ``Graph``, collecting every error with its position."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from headrace import registry
from headrace.config.errors import ConfigError, ConfigIssue, Position, did_you_mean
from headrace.config.graph import ComponentSpec, Edge, Graph, ProcessorSpec
from headrace.config.model import Config, OfframpConfig, OnrampConfig, ProcessorRef
from headrace.config.names import list_node_ids
from headrace.config.validate import validate_model
from headrace.config.yamlpos import SourceMap, load_yaml
from headrace.contract.codec import Codec
from headrace.contract.context import PluginContext
from headrace.contract.expr import ExpressionError
from headrace.contract.paths import SettingError, check_folder_path

PIPELINE_PORTS = ("in", "out", "err")

log = logging.getLogger("headrace.config")


def _find(value: Any, text: str, sub: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The path of the string ``text`` inside ``value`` (nested dicts and lists), or None."""
    if isinstance(value, str):
        return sub if value == text else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _find(v, text, (*sub, k))
        if found is not None:
            return found
    return None


class _Builder:
    def __init__(self, file: Path, smap: SourceMap, cfg: Config, data: dict[str, Any]) -> None:
        self.file = file
        self.base_dir = file.parent
        self.smap = smap
        self.cfg = cfg
        self.data = data
        self.issues: list[ConfigIssue] = []
        self.codecs: dict[str, ProcessorSpec] = {}
        self.components: dict[str, ComponentSpec] = {}
        self.pipeline_ports: dict[str, set[str]] = {}
        # internal links per pipeline: (src node or "in", port) -> [targets: node id or ("<pipe>", port)]
        self.internal: dict[str, dict[tuple[str, str], list[tuple[str, Any]]]] = {}
        self.top: dict[tuple[str, str], list[tuple[str, tuple[str | int, ...]]]] = {}
        self.dead_out: dict[str, ComponentSpec] = {}  # list pipelines whose last node never uses 'out'

    def _unused_out(self, spec: ComponentSpec) -> bool:
        try:
            return not registry.load("operators", spec.plugin).uses_out
        except Exception:  # an unloadable plugin was reported where it is named
            return False

    def err(self, pos: Position, msg: str) -> None:
        self.issues.append(ConfigIssue(pos, msg))

    def context(self, cid: str, framing: tuple[str, ...] = ()) -> PluginContext:
        return PluginContext(cid, self.base_dir, framing=framing)

    # -- plugins -----------------------------------------------------------------------------
    def plugin(self, kind: registry.Kind, name: str, pos: Position) -> Any:
        try:
            return registry.load(kind, name)
        except registry.UnknownPlugin as exc:
            self.err(pos, str(exc.__cause__ or exc))
            return None
        except Exception as exc:  # a broken (third-party) plugin is a config issue, not a crash of `check`
            self.err(pos, f"{kind[:-1]} '{name}' cannot be loaded: {type(exc).__name__}: {exc}")
            return None

    def plugin_config(self, cls: Any, data: Any, path: tuple[str | int, ...], what: str, also: tuple[str, ...] = ()) -> Any:
        obj, issues = validate_model(cls.Config, data if data is not None else {}, path, self.smap, what, also)
        self.issues.extend(issues)
        return obj

    def processors(self, kind: registry.Kind, refs: list[str | ProcessorRef], path: tuple[str | int, ...]) -> list[ProcessorSpec]:
        out = []
        for i, ref in enumerate(refs):
            name = ref if isinstance(ref, str) else ref.name
            options = {} if isinstance(ref, str) else dict(ref.model_extra or {})
            cls = self.plugin(kind, name, self.smap.at((*path, i)))
            if cls is not None:
                cfg = self.plugin_config(cls, options, (*path, i), f"{kind[:-1]} '{name}'")
                if cfg is not None:
                    out.append(ProcessorSpec(name, cfg))
        return out

    def connector(self, kind: str, cid: str, spec: OnrampConfig | OfframpConfig) -> None:
        section = f"{kind}s"
        path: tuple[str | int, ...] = (section, cid)
        pos = self.smap.at(path, key=True)
        cls = self.plugin(section, spec.type, self.smap.at((*path, "type")))  # type: ignore[arg-type]
        codec_name = spec.codec if isinstance(spec.codec, str) else spec.codec.name
        codec_cls = self.plugin("codecs", codec_name, self.smap.at((*path, "codec")))
        if codec_cls is None or cls is None:
            return
        codec_key = codec_name
        if isinstance(spec.codec, str) and getattr(codec_cls.settle, "__func__", None) is not getattr(Codec.settle, "__func__", None):
            try:  # a codec named without options: its defaults must do
                codec_cls.settle(codec_cls.Config(), self.context(cid))
            except (ValueError, OSError) as exc:
                self.err(self.smap.at((*path, "codec")), f"codec '{codec_name}' of {kind} '{cid}' needs options: {exc}")
                return
        if not isinstance(spec.codec, str):  # options: a codec instance of this component's own
            options = dict(spec.codec.model_extra or {})
            codec_cfg = self.plugin_config(codec_cls, options, (*path, "codec"), f"codec '{codec_name}' of {kind} '{cid}'")
            if codec_cfg is None:
                return
            try:  # paths resolved, files read: every instance (workers' too) gets the settled config
                codec_cfg = codec_cls.settle(codec_cfg, self.context(cid))
            except SettingError as exc:
                self.err(self.smap.at((*path, "codec", exc.key)), f"codec '{codec_name}' of {kind} '{cid}': {exc.key}: {exc}")
                return
            except (ValueError, OSError, ImportError) as exc:
                self.err(self.smap.at((*path, "codec")), f"codec '{codec_name}' of {kind} '{cid}': {exc}")
                return
            codec_key = f"{codec_name}@{cid}"
            self.codecs[codec_key] = ProcessorSpec(codec_name, codec_cfg)
        cfg = self.plugin_config(cls, spec.config, (*path, "config"), f"{kind} '{cid}' ({spec.type}) config")
        if isinstance(spec, OnrampConfig):
            refs = spec.preprocessors if spec.preprocessors is not None else list(cls.default_preprocessors)
            procs = self.processors("preprocessors", refs, (*path, "preprocessors"))
        else:
            refs = spec.postprocessors if spec.postprocessors is not None else list(cls.default_postprocessors)
            procs = self.processors("postprocessors", refs, (*path, "postprocessors"))
        if cfg is None:
            return
        try:
            cls(cfg, self.context(cid, tuple(p.name for p in procs))).check()
        except SettingError as exc:
            self.err(self.smap.at((*path, "config", exc.key)), f"{kind} '{cid}': {exc.key}: {exc}")
        except (ValueError, OSError, ImportError) as exc:
            self.err(pos, f"{kind} '{cid}': {exc}")
        ports = ("out", "err") if kind == "onramp" else ("err",)
        self.components[cid] = ComponentSpec(
            cid, kind, spec.type, cfg, self.data[section][cid], pos, ports, None, codec_key, procs,  # type: ignore[arg-type]
            spec.ordered if isinstance(spec, OnrampConfig) else True, spec.with_meta if isinstance(spec, OfframpConfig) else False,
            spec.retry if isinstance(spec, OfframpConfig) else None, spec.buffer if isinstance(spec, OfframpConfig | OnrampConfig) else None,
        )

    # -- pipelines ---------------------------------------------------------------------------
    @staticmethod
    def stage_name(pipe: str, nid: str, path: tuple[str | int, ...], listed: bool) -> str:
        """How a message names a node that has no name of its own yet (no op, no function): by position in a list."""
        return f"stage {int(path[-1]) + 1} of pipeline '{pipe}'" if listed else f"node '{nid}' in pipeline '{pipe}'"

    def node(self, pipe: str, nid: str, raw: Any, path: tuple[str | int, ...], *, listed: bool) -> ComponentSpec | None:
        """A node of pipeline ``pipe``; ``listed``: written in a list (it may carry an ``id:``)."""
        pos = self.smap.at(path)
        if not isinstance(raw, dict):
            self.err(pos, f"{self.stage_name(pipe, nid, path, listed)} must be a mapping with an 'op' key")
            return None
        if "op" not in raw:
            self.err(pos, f"{self.stage_name(pipe, nid, path, listed)} has no 'op' (known: {', '.join(registry.names('operators'))})")
            return None
        op = raw["op"]
        cls = self.plugin("operators", str(op), self.smap.at((*path, "op")))
        if cls is None:
            return None
        taken = ("id", "op") if listed else ("op",)  # in a graph, the node's key is its id
        options = {k: v for k, v in raw.items() if k not in taken}
        cfg = self.plugin_config(cls, options, path, f"operator '{op}' of node '{pipe}.{nid}'", also=taken)
        if cfg is None:
            return None
        cid = f"{pipe}.{nid}"
        fn_pos = self.smap.at((*path, "fn")) if "fn" in raw else pos  # import errors point at the module:callable
        try:
            cls(cid, cfg, self.context(cid)).check()
        except SettingError as exc:
            self.err(self.smap.at((*path, exc.key)), f"node '{cid}': {exc.key}: {exc}")
        except ExpressionError as exc:  # point at the offending expression and name its key
            sub = _find(options, exc.text) if exc.text else None
            if sub is None:
                self.err(pos, f"node '{cid}': {exc}")
            else:
                self.err(self.smap.at(path + sub), f"node '{cid}': {'.'.join(map(str, sub))}: {exc}")
        except (ImportError, TypeError, ValueError, SyntaxError) as exc:
            self.err(fn_pos, f"node '{cid}': cannot load {getattr(cfg, 'fn', op)}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # user module raised at import
            self.err(fn_pos, f"node '{cid}': loading failed: {type(exc).__name__}: {exc}")
        ports = ("out", "err", *cls.ports_for(cfg))
        return ComponentSpec(cid, "node", str(op), cfg, raw, self.smap.at(path, key=True), ports, pipe)

    def pipeline(self, pipe: str, raw: Any) -> None:
        path: tuple[str | int, ...] = ("pipelines", pipe)
        links: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        self.internal[pipe] = links
        exposed = {"out", "err"}
        if isinstance(raw, list):
            nodes: list[ComponentSpec] = []
            ids, refused = list_node_ids(raw)
            for i, why in refused:
                self.err(self.smap.at((*path, i, "id")), f"{why} in pipeline '{pipe}'")
            for i, (item, nid) in enumerate(zip(raw, ids, strict=True)):
                if nid is None:
                    continue
                spec = self.node(pipe, nid, item, (*path, i), listed=True)
                if spec is not None:
                    nodes.append(spec)
            prev = ("in", "out")
            for spec in nodes:
                links.setdefault(prev, []).append(("node", spec.id))
                links.setdefault((spec.id, "err"), []).append(("pipe", "err"))
                for port in spec.ports[2:]:  # extra ports become pipeline ports of the same name
                    links.setdefault((spec.id, port), []).append(("pipe", port))
                    exposed.add(port)
                prev = (spec.id, "out")
                self.components[spec.id] = spec
            links.setdefault(prev, []).append(("pipe", "out"))
            if nodes and self._unused_out(nodes[-1]):
                self.dead_out[pipe] = nodes[-1]
        elif isinstance(raw, dict):
            unknown = set(raw) - {"nodes", "links"}
            for key in sorted(unknown):
                self.err(self.smap.at((*path, key), key=True),
                         f"unknown key '{key}' in pipeline '{pipe}'{did_you_mean(key, ('nodes', 'links'))} (expected: nodes, links, or a list of stages)")
            nodes_raw = raw.get("nodes") or {}
            if not isinstance(nodes_raw, dict):
                self.err(self.smap.at((*path, "nodes")), f"pipeline '{pipe}': nodes must be a mapping of id -> stage")
                nodes_raw = {}
            for nid, item in nodes_raw.items():
                if nid in PIPELINE_PORTS or "." in nid or "/" in nid:
                    self.err(self.smap.at((*path, "nodes", nid), key=True), f"node id '{nid}' is reserved or contains '.' or '/'")
                    continue
                spec = self.node(pipe, nid, item, (*path, "nodes", nid), listed=False)
                if spec is not None:
                    self.components[spec.id] = spec
            link_raw = raw.get("links") or {}
            if not isinstance(link_raw, dict):
                self.err(self.smap.at((*path, "links")), f"pipeline '{pipe}': links must be a mapping")
                link_raw = {}
            for key, targets in link_raw.items():
                kpath = (*path, "links", key)
                src, _, port = str(key).partition("/")
                port = port or "out"
                if src == "in":
                    if port != "out":
                        self.err(self.smap.at(kpath, key=True), f"pipeline '{pipe}': 'in' has no port '{port}'")
                        continue
                    skey = ("in", "out")
                else:
                    comp = self.components.get(f"{pipe}.{src}")
                    if comp is None:
                        if src not in nodes_raw:
                            self.err(self.smap.at(kpath, key=True), f"link from unknown node '{src}' in pipeline '{pipe}'{did_you_mean(src, ['in', *nodes_raw])}")
                        continue
                    if port not in comp.ports:
                        self.err(self.smap.at(kpath, key=True), f"node '{comp.id}' ({comp.plugin}) has no port '{port}'{did_you_mean(port, comp.ports)} "
                                                                f"(ports: {', '.join(comp.ports)})")  # fmt: skip
                        continue
                    if port == "out" and self._unused_out(comp):
                        self.err(self.smap.at(kpath, key=True), f"node '{src}' ({comp.plugin}) sends nothing to 'out': its events leave by "
                                                                f"{', '.join(f'{src}/{p}' for p in comp.ports[2:])}")  # fmt: skip
                        continue
                    skey = (comp.id, port)
                if not isinstance(targets, (str, list)):
                    self.err(self.smap.at(kpath), f"pipeline '{pipe}': the targets of link '{key}' must be a node id or a list of them, "
                                                  f"not {type(targets).__name__}")  # fmt: skip
                    continue
                for j, tgt in enumerate([targets] if isinstance(targets, str) else targets):
                    tpath = kpath + ((j,) if not isinstance(targets, str) else ())
                    tgt = str(tgt)
                    if tgt in ("out", "err"):
                        links.setdefault(skey, []).append(("pipe", tgt))
                    elif f"{pipe}.{tgt}" in self.components:
                        links.setdefault(skey, []).append(("node", f"{pipe}.{tgt}"))
                    elif tgt not in nodes_raw:
                        self.err(self.smap.at(tpath), f"link to unknown node '{tgt}' in pipeline '{pipe}'{did_you_mean(tgt, ['out', 'err', *nodes_raw])}")
            for comp in [c for c in self.components.values() if c.pipeline == pipe]:
                if (comp.id, "err") not in links:
                    links[(comp.id, "err")] = [("pipe", "err")]
        else:
            self.err(self.smap.at(path), f"pipeline '{pipe}' must be a list of stages or a mapping with nodes and links")
        self.pipeline_ports[pipe] = exposed

    # -- top-level links -----------------------------------------------------------------------
    def top_links(self) -> None:
        for key, targets in self.cfg.links.items():
            kpath: tuple[str | int, ...] = ("links", key)
            src, _, port = key.partition("/")
            port = port or "out"
            if src in self.cfg.onramps:
                if port not in ("out", "err"):
                    self.err(self.smap.at(kpath, key=True), f"onramp '{src}' has no port '{port}'{did_you_mean(port, ('out', 'err'))} (ports: out, err)")
                    continue
            elif src in self.pipeline_ports:
                if port not in self.pipeline_ports[src]:
                    ports = sorted(self.pipeline_ports[src])
                    self.err(self.smap.at(kpath, key=True), f"pipeline '{src}' has no port '{port}'{did_you_mean(port, ports)} (ports: {', '.join(ports)})")
                    continue
                last = self.dead_out.get(src)
                if port == "out" and last is not None:
                    self.err(self.smap.at(kpath, key=True), f"pipeline '{src}' ends with '{last.plugin}', which sends nothing to 'out': link "
                                                            f"{', '.join(f'{src}/{p}' for p in last.ports[2:])} instead")  # fmt: skip
                    continue
            elif src in self.cfg.offramps:
                if port != "err":
                    self.err(self.smap.at(kpath, key=True), f"offramp '{src}' has only an 'err' port (for records it rejects)")
                    continue
            else:
                known = [*self.cfg.onramps, *self.pipeline_ports, *self.cfg.offramps]
                self.err(self.smap.at(kpath, key=True), f"link from unknown component '{src}'{did_you_mean(src, known)}")
                continue
            tlist = [targets] if isinstance(targets, str) else list(targets)
            for j, tgt in enumerate(tlist):
                tpath = kpath + ((j,) if not isinstance(targets, str) else ())
                tname, _, tport = tgt.partition("/")
                if tport and tport != "in":
                    self.err(self.smap.at(tpath), f"link target '{tgt}': only the 'in' port can receive")
                elif tname in self.cfg.onramps:
                    self.err(self.smap.at(tpath), f"onramp '{tname}' cannot be the target of a link")
                elif tname not in self.pipeline_ports and tname not in self.cfg.offramps:
                    self.err(self.smap.at(tpath), f"link to unknown component '{tgt}'{did_you_mean(tname, [*self.pipeline_ports, *self.cfg.offramps])}")
                else:
                    self.top.setdefault((src, port), []).append((tname, tpath))

    # -- flattening ------------------------------------------------------------------------------
    def resolve(self, pipe_or_onramp: str, port: str, stack: tuple[tuple[str, str], ...] = ()) -> list[str]:
        """Runtime targets of a top-level (component, port)."""
        if (pipe_or_onramp, port) in stack:
            first = self.top.get((pipe_or_onramp, port), [("", ())])[0][1]
            self.err(self.smap.at(first), f"cycle through pipeline ports: {' -> '.join(f'{a}/{b}' for a, b in (*stack, (pipe_or_onramp, port)))}")
            return []
        out: list[str] = []
        for tname, _ in self.top.get((pipe_or_onramp, port), []):
            if tname in self.cfg.offramps:
                if tname in self.components:
                    out.append(tname)
            else:
                out.extend(self.resolve_internal(tname, "in", "out", (*stack, (pipe_or_onramp, port))))
        return list(dict.fromkeys(out))

    def resolve_internal(self, pipe: str, src: str, port: str, stack: tuple[tuple[str, str], ...]) -> list[str]:
        out: list[str] = []
        for kind, target in self.internal.get(pipe, {}).get((src, port), []):
            if kind == "node":
                out.append(target)
            else:
                out.extend(self.resolve(pipe, target, stack))
        return out

    def state_dir(self) -> None:
        if self.cfg.daemon.state_dir is None:  # the default is made when first needed, beside the config or by systemd
            return
        try:
            check_folder_path("state_dir", self.base_dir / self.cfg.daemon.state_dir)
        except SettingError as exc:
            self.err(self.smap.at(("daemon", "state_dir")), f"daemon.state_dir: {exc}")

    def build(self) -> Graph:
        self.state_dir()
        for cid, on in self.cfg.onramps.items():
            self.connector("onramp", cid, on)
        for cid, off in self.cfg.offramps.items():
            self.connector("offramp", cid, off)
        for kind_a, kind_b in (("onramps", "offramps"), ("onramps", "pipelines"), ("pipelines", "offramps")):
            for dup in sorted(set(self.data.get(kind_a) or {}) & set(self.data.get(kind_b) or {})):
                self.err(self.smap.at((kind_b, dup), key=True), f"duplicate id '{dup}': already used in {kind_a}")
        for pipe, raw in self.cfg.pipelines.items():
            if "." in pipe or "/" in pipe:
                self.err(self.smap.at(("pipelines", pipe), key=True), f"pipeline id '{pipe}' may not contain '.' or '/'")
                continue
            self.pipeline(pipe, raw)
        self.top_links()
        edges: dict[Edge, list[str]] = {}
        for cid in self.cfg.onramps:
            if cid in self.components:
                for port in ("out", "err"):
                    edges[(cid, port)] = self.resolve(cid, port)
        for cid in self.cfg.offramps:
            if cid in self.components:
                edges[(cid, "err")] = self.resolve(cid, "err")
        for pipe, links in self.internal.items():
            for (src, port), _ in links.items():
                if src != "in":
                    edges[(src, port)] = self.resolve_internal(pipe, src, port, ())
        for comp in self.components.values():
            if comp.kind == "node":
                for port in comp.ports:
                    edges.setdefault((comp.id, port), [])
        if self.issues:
            raise ConfigError(self.issues)
        order = self.toposort(edges)
        self.reachability(edges)
        if self.issues:
            raise ConfigError(self.issues)
        unlinked = [e for e, t in edges.items() if not t]
        comps = {cid: self.components[cid] for cid in order}
        graph = Graph(self.file, self.base_dir, self.cfg.daemon, comps, {e: t for e, t in edges.items() if t}, unlinked, self.cfg.tests,
                      self.data, self.codecs, self.warnings(unlinked))  # fmt: skip
        log.debug("%s: %d component(s), %d edge(s); order %s", self.smap.file, len(comps), len(graph.edges), ", ".join(comps))
        for (src, port), targets in graph.edges.items():
            log.debug("%s: %s/%s -> %s", self.smap.file, src, port, ", ".join(targets))
        return graph

    def warnings(self, unlinked: list[Edge]) -> list[ConfigIssue]:
        """Ports whose events would be counted and dropped (an unlinked err port has its last-resort file)."""
        out = []
        for src, port in unlinked:
            comp = self.components[src]
            if port == "err" or (port == "out" and self._unused_out(comp)):
                continue
            listed = comp.pipeline is not None and isinstance(self.cfg.pipelines.get(comp.pipeline), list)
            name = f"{comp.pipeline}/{port}" if listed else f"{src}/{port}"  # a list's node ports are the pipeline's
            out.append(ConfigIssue(comp.position, f"port {name} is not linked: its events will be counted and dropped"))
        return out

    def toposort(self, edges: dict[Edge, list[str]]) -> list[str]:
        succ: dict[str, list[str]] = {cid: [] for cid in self.components}
        for (src, _), targets in edges.items():
            succ[src].extend(targets)
        state: dict[str, int] = {}
        order: list[str] = []

        def visit(cid: str, path: list[str]) -> None:
            if state.get(cid) == 2:
                return
            if state.get(cid) == 1:
                cycle = [*path[path.index(cid):], cid]
                self.err(self.components[cid].position, f"cycle: {' -> '.join(cycle)}")
                return
            state[cid] = 1
            for nxt in succ[cid]:
                visit(nxt, [*path, cid])
            state[cid] = 2
            order.append(cid)

        for cid in self.components:
            visit(cid, [])
        return list(reversed(order))

    def reachability(self, edges: dict[Edge, list[str]]) -> None:
        seen: set[str] = set()
        stack = [c.id for c in self.components.values() if c.kind == "onramp"]
        for cid in stack:
            if not any(edges.get((cid, p)) for p in ("out", "err")):
                self.err(self.components[cid].position, f"onramp '{cid}' is not linked to anything")
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            for port in self.components[cid].ports:
                stack.extend(edges.get((cid, port), []))
        for comp in self.components.values():
            if comp.id not in seen:
                what = f"node '{comp.id}'" if comp.kind == "node" else f"{comp.kind} '{comp.id}'"
                self.err(comp.position, f"{what} is not reachable from any onramp")


def load_text(text: str, file: Path, env: dict[str, str] | None = None, shown: str | None = None) -> Graph:
    """The graph of the config ``text`` read from ``file`` (relative paths resolve beside it);
    ``env`` replaces os.environ for ``${VAR}``; ``shown`` names the file in messages (default: ``file``)."""
    name = str(file) if shown is None else shown
    try:
        return _load_text(text, file, env, name)
    except RecursionError:  # the YAML parser, the model and the graph builder all recurse on nesting
        raise ConfigError([ConfigIssue(Position(name, 1, 1), "the document is nested too deeply to be a config")]) from None


def _load_text(text: str, file: Path, env: dict[str, str] | None, name: str) -> Graph:
    data, smap = load_yaml(text, name, env)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(Position(name, 1, 1), "the config must be a mapping with onramps, pipelines, offramps and links")])
    cfg, issues = validate_model(Config, data, (), smap)
    if cfg is None:
        raise ConfigError(issues)
    if not cfg.onramps:
        raise ConfigError([ConfigIssue(smap.at(()), "no onramps: nothing would ever flow")])
    return _Builder(file, smap, cfg, data).build()


def load_file(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Graph:
    """The graph of the config file ``path``; messages name it as given (not resolved)."""
    file = Path(path).resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(Position(str(path), 1, 1), f"cannot read config: {exc}")]) from None
    log.debug("config %s (%s): %d bytes", path, file, len(text))
    return load_text(text, file, env, shown=str(path))

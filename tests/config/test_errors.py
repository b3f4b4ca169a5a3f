"""The config error corpus: each invalid config and the exact ``file:line:col: message`` lines it gives.

Every case is written to a file in the test's folder and loaded with the real loader;
the complete list of messages is compared (not a substring), so a message that changes
wording or moves to another position fails here. The YAML of each case starts on line 1
right after the opening quotes, so the line numbers can be read off the text.

Lists of plugin names and of a plugin's own config fields are taken from the registry
and the plugin's model, so that adding a plugin elsewhere does not break these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace import registry
from headrace.config.errors import ConfigError
from headrace.config.load import load_file
from headrace.plugins.onramps.file import FileOnramp
from tests.support.imports import restored_imports

ONRAMPS = ", ".join(registry.names("onramps"))
OFFRAMPS = ", ".join(registry.names("offramps"))
CODECS = ", ".join(registry.names("codecs"))
PREPROCESSORS = ", ".join(registry.names("preprocessors"))
POSTPROCESSORS = ", ".join(registry.names("postprocessors"))
OPERATORS = ", ".join(registry.names("operators"))
FILE_ONRAMP_FIELDS = ", ".join(sorted(FileOnramp.Config.model_fields))

# stage modules written next to every case's config (unique names: imported modules stay cached)
STAGE_FILES = {
    "hr_raises_at_import.py": "raise RuntimeError('database is down')\n",
    "hr_stage_ok.py": "def classify(event, meta):\n    return event\n",
    "hr_one_arg.py": "def classify(event):\n    return event\n\nclass Stage:\n    def process(self, event):\n        return event\n",
    "http.py": "def work(event, meta):\n    return event\n",
}


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Stage imports put the config folder on sys.path and modules in sys.modules: undo both."""
    with restored_imports():
        yield


def write_config(folder: Path, text: str) -> Path:
    for name, source in STAGE_FILES.items():
        (folder / name).write_text(source)
    path = folder / "headrace.yaml"
    path.write_text(text)
    return path


def issues_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_file(path, env={} if env is None else env)
    return [str(i) for i in info.value.issues]


INVALID = [
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}
pipelines: {}
""",
        [
            "3:1: invalid YAML: expected ',' or '}', but got '<scalar>' (while parsing a flow mapping at line 2, column 10)",
        ],
        id="invalid_yaml",
    ),
    pytest.param(
        "version: 1\nonramps:\n\tsrc: {type: stdin}\n",
        [
            "3:1: invalid YAML: found character '\\t' that cannot start any token",
        ],
        id="tab_indent",
    ),
    pytest.param(
        """\
version: 1
onramps:
  a: &base {type: stdin}
  b:
    <<: *base
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {a: [main], b: [main], main: [out]}
""",
        [
            "5:5: YAML merge keys (<<) are not supported",
        ],
        id="merge_key",
    ),
    pytest.param(
        """\
- onramps
- links
""",
        [
            "1:1: the config must be a mapping with onramps, pipelines, offramps and links",
        ],
        id="top_list",
    ),
    pytest.param(
        """\
just a string
""",
        [
            "1:1: the config must be a mapping with onramps, pipelines, offramps and links",
        ],
        id="top_scalar",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
onramp: {}
""",
        [
            "6:1: unknown key 'onramp' in the top level: did you mean 'onramps'? (expected one of: daemon, links, offramps, onramps, pipelines, tests, version)",
        ],
        id="unknown_top",
    ),
    pytest.param(
        """\
version: 1
daemon:
  worker: 2
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:3: unknown key 'worker' in daemon: did you mean 'workers'? (expected one of: batch_size, error_budget, job_transport, loop_block_threshold, memory, metrics, queue_bytes, queue_events, shutdown_timeout, stage_timeout, start_timeout, state_dir, unready_after, worker_max_rss, worker_nice, workers)",
        ],
        id="unknown_daemon",
    ),
    pytest.param(
        """\
version: 1
daemon: {metrics: {listn: "127.0.0.1:0"}}
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "2:20: unknown key 'listn' in daemon.metrics: did you mean 'listen'? (expected one of: allowed_hosts, listen, token, token_file)",
        ],
        id="unknown_metrics",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src:
    type: stdin
    cdec: json
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:5: unknown key 'cdec' in onramps.src: did you mean 'codec'? (expected one of: buffer, codec, config, ordered, preprocessors, type)",
        ],
        id="unknown_onramp_key",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps:
  out: {type: stdout, with_mta: true}
links: {src: [main], main: [out]}
""",
        [
            "5:23: unknown key 'with_mta' in offramps.out: did you mean 'with_meta'? (expected one of: buffer, codec, config, postprocessors, retry, type, with_meta)",
        ],
        id="unknown_offramp_key",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: file, config: {pth: x}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:21: missing required key 'path' in onramp 'src' (file) config",
            f"3:30: unknown key 'pth' in onramp 'src' (file) config: did you mean 'path'? (expected one of: {FILE_ONRAMP_FIELDS})",
        ],
        id="unknown_plugin_config_key",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: filter, where: 'True', wehre: 'False'}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:35: unknown key 'wehre' in operator 'filter' of node 'main.filter': did you mean 'where'? (expected one of: id, op, where)",
        ],
        id="unknown_operator_option",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      lim: {op: bucket, window: 1s, slot: 10}
    links: {in: [lim], lim: [out]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:37: unknown key 'slot' in operator 'bucket' of node 'main.lim': did you mean 'slots'? (expected one of: max_groups, op, slots, window)",
        ],
        id="unknown_graph_node_option",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    node: {}
    links: {in: [out]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:5: unknown key 'node' in pipeline 'main': did you mean 'nodes'? (expected: nodes, links, or a list of stages)",
        ],
        id="unknown_graph_pipeline_key",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: stdin, preprocessors: [{name: lines, max_bytes: 10}]}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:52: unknown key 'max_bytes' in preprocessor 'lines': did you mean 'max_line_bytes'? (expected one of: max_line_bytes, separator)",
        ],
        id="unknown_processor_option",
    ),
    pytest.param(
        """\
version: 1
daemon:
  workers: many
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:12: daemon.workers: expected auto or a number from 0 to 1024",
        ],
        id="workers_string",
    ),
    pytest.param(
        """\
version: 1
daemon: {workers: -1}
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "2:19: daemon.workers: expected auto or a number from 0 to 1024",
        ],
        id="workers_negative",
    ),
    pytest.param(
        """\
version: 1
daemon:
  batch_size: -1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:15: daemon.batch_size: Input should be greater than or equal to 1",
        ],
        id="batch_size_negative",
    ),
    pytest.param(
        """\
version: 1
daemon:
  shutdown_timeout: soon
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:21: daemon.shutdown_timeout: expected a duration such as 250ms, 20s or 1m",
        ],
        id="shutdown_timeout_word",
    ),
    pytest.param(
        """\
version: 1
daemon: {queue_bytes: 12 parsecs}
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "2:23: daemon.queue_bytes: expected a size such as 4096, 64KiB or 16MiB",
        ],
        id="queue_bytes_unit",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src:
    type: file
    config:
      path: in.ndjson
      follow: maybe
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "7:15: onramps.src.config.follow: Input should be a valid boolean, unable to interpret input",
        ],
        id="follow_maybe",
    ),
    pytest.param(
        """\
version: 2
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "1:10: version: Input should be 1",
        ],
        id="version_2",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: [stdin]
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:8: onramps.src: expected a mapping",
        ],
        id="onramp_not_mapping",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: 5
  main: [out]
""",
        [
            "6:8: links.src: Input should be a valid list",
        ],
        id="link_targets_not_list",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src:
    codec: json
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:3: missing required key 'type' in onramps.src",
        ],
        id="onramp_without_type",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src:
    type: file
    config: {follow: true}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:5: missing required key 'path' in onramp 'src' (file) config",
        ],
        id="file_onramp_without_path",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:7: missing required key 'where' in operator 'filter' of node 'main.filter'",
        ],
        id="filter_without_where",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: python, concurrency: 4}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:7: missing required key 'fn' in operator 'python' of node 'main.python'",
        ],
        id="python_without_fn",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {where: 'True'}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            f"5:7: stage 1 of pipeline 'main' has no 'op' (known: {OPERATORS})",
        ],
        id="stage_without_op",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: fiel}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            f"3:15: unknown onramp 'fiel': did you mean 'file'? (known: {ONRAMPS})",
        ],
        id="unknown_onramp_type",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps:
  out: {type: stdot}
links: {src: [main], main: [out]}
""",
        [
            f"5:15: unknown offramp 'stdot': did you mean 'stdout'? (known: {OFFRAMPS})",
        ],
        id="unknown_offramp_type",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: stdin, codec: jsonn}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            f"3:29: unknown codec 'jsonn': did you mean 'json'? (known: {CODECS})",
        ],
        id="unknown_codec",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src:
    type: stdin
    preprocessors: [lines, line]
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            f"5:28: unknown preprocessor 'line': did you mean 'lines'? (known: {PREPROCESSORS})",
        ],
        id="unknown_preprocessor",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps:
  out: {type: stdout, postprocessors: [gzipp]}
links: {src: [main], main: [out]}
""",
        [
            f"5:40: unknown postprocessor 'gzipp': did you mean 'gzip'? (known: {POSTPROCESSORS})",
        ],
        id="unknown_postprocessor",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: filter, where: 'True'}
    - {op: filtr}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            f"6:12: unknown operator 'filtr': did you mean 'filter'? (known: {OPERATORS})",
        ],
        id="unknown_operator",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: stdin}
  src: {type: stdin}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout, codec: json, codec: string}}
links: {src: [main], main: [out]}
""",
        [
            "4:3: duplicate key 'src'",
            "6:45: duplicate key 'codec'",
        ],
        id="duplicate_yaml_key",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main: [{op: filter, where: 'True'}]
  src: [{op: filter, where: 'True'}]
offramps:
  out: {type: stdout}
  main: {type: stdout}
links: {src: [main], main: [out]}
""",
        [
            "5:3: duplicate id 'src': already used in onramps",
            "8:3: duplicate id 'main': already used in pipelines",
        ],
        id="duplicate_ids",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {id: f, op: filter, where: 'True'}
    - {id: f, op: filter, where: 'False'}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:12: duplicate node id 'f' in pipeline 'main'",
        ],
        id="duplicate_node_id",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main]
  main: [out]
  mian/err: [out]
""",
        [
            "8:3: link from unknown component 'mian': did you mean 'main'?",
        ],
        id="link_from_unknown",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main]
  main: [out, ouptut]
""",
        [
            "7:15: link to unknown component 'ouptut': did you mean 'out'?",
        ],
        id="link_to_unknown",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main/out]
  main: [out]
""",
        [
            "6:9: link target 'main/out': only the 'in' port can receive",
        ],
        id="link_to_port_not_in",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      keep: {op: filter, where: 'True'}
    links:
      in: [keep]
      keep: [kept]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "9:14: link to unknown node 'kept' in pipeline 'main': did you mean 'keep'?",
        ],
        id="graph_link_to_unknown_node",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      keep: {op: filter, where: 'True'}
    links:
      in: [keep]
      keep: [out]
      kept: [out]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "10:7: link from unknown node 'kept' in pipeline 'main': did you mean 'keep'?",
        ],
        id="graph_link_from_unknown_node",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main]
  main: [out]
  main/overflow: [out]
""",
        [
            "8:3: pipeline 'main' has no port 'overflow' (ports: err, out)",
        ],
        id="pipeline_port_missing",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: route
      routes: {alerts: "True"}
  graph:
    nodes: {r: {op: route, routes: {alerts: "True"}}}
    links: {in: [r], r/alert: [out], r/defualt: [out]}
offramps: {out: {type: stdout}}
links: {src: [main, graph], main/alerst: [out], main/default: [out], graph: [out], srv/err: [out], src/eror: [out]}
""",
        [
            "9:22: node 'graph.r' (route) has no port 'alert': did you mean 'alerts'? (ports: out, err, alerts, default)",
            "9:38: node 'graph.r' (route) has no port 'defualt': did you mean 'default'? (ports: out, err, alerts, default)",
            "11:29: pipeline 'main' has no port 'alerst': did you mean 'alerts'? (ports: alerts, default, err, out)",
            "11:84: link from unknown component 'srv': did you mean 'src'?",
            "11:100: onramp 'src' has no port 'eror': did you mean 'err'? (ports: out, err)",
        ],
        id="port_typos",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      n: {op: filter, where: 'True'}
    links:
      in: [n]
      n: [out]
      n/nope: [err]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "10:7: node 'main.n' (filter) has no port 'nope' (ports: out, err)",
        ],
        id="node_port_missing",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src/data: [main]
  src: [main]
  main: [out]
""",
        [
            "6:3: onramp 'src' has no port 'data' (ports: out, err)",
        ],
        id="onramp_port_missing",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main]
  main: [out]
  out: [main]
""",
        [
            "8:3: offramp 'out' has only an 'err' port (for records it rejects)",
        ],
        id="offramp_as_source",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links:
  src: [main]
  main: [out, src]
""",
        [
            "7:15: onramp 'src' cannot be the target of a link",
        ],
        id="onramp_as_target",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  a: [{op: filter, where: 'True'}]
  b: [{op: filter, where: 'True'}]
offramps: {out: {type: stdout}}
links:
  src: [a]
  a: [b]
  b: [a]
  b/err: [out]
""",
        [
            "4:7: cycle: a.filter -> b.filter -> a.filter",
        ],
        id="cycle_between_pipelines",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  a: []
  b: []
offramps: {out: {type: stdout}}
links:
  src: [a]
  a: [b]
  b: [a, out]
""",
        [
            "9:7: cycle through pipeline ports: src/out -> a/out -> b/out -> a/out",
        ],
        id="cycle_through_empty_pipelines",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      x: {op: filter, where: 'True'}
      y: {op: filter, where: 'True'}
    links:
      in: [x]
      x: [y]
      y: [x, out]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:7: cycle: main.x -> main.y -> main.x",
        ],
        id="cycle_inside_graph",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps:
  out: {type: stdout}
  spare: {type: stderr}
links: {src: [main], main: [out]}
""",
        [
            "6:3: offramp 'spare' is not reachable from any onramp",
        ],
        id="unreachable_offramp",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    nodes:
      x: {op: filter, where: 'True'}
      y: {op: filter, where: 'True'}
    links:
      in: [x]
      x: [out]
      y: [out]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "7:7: node 'main.y' is not reachable from any onramp",
        ],
        id="unreachable_node",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: stdin}
  idle: {type: metronome}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "4:3: onramp 'idle' is not linked to anything",
        ],
        id="onramp_linked_to_nothing",
    ),
    pytest.param(
        """\
version: 1
offramps: {out: {type: stdout}}
""",
        [
            "1:1: no onramps: nothing would ever flow",
        ],
        id="no_onramps",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: file, config: {path: "${HR_TEST_UNSET_VAR}/in.ndjson"}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "3:36: environment variable HR_TEST_UNSET_VAR is not set (use ${HR_TEST_UNSET_VAR:-default})",
        ],
        id="unset_env",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
      where: "__import__('os')"
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:14: node 'main.filter': where: name '__import__' is not allowed",
        ],
        id="expr_import",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
      where: event.__class__
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:14: node 'main.filter': where: attribute '__class__' is not allowed",
        ],
        id="expr_dunder_attribute",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
      where: open('x')
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:14: node 'main.filter': where: unknown name 'open' (available: event, meta)",
        ],
        id="expr_open",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
      where: "lambda: 1"
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:14: node 'main.filter': where: Lambda is not allowed in expressions",
        ],
        id="expr_lambda",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: filter
      where: event['level' ==
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:14: node 'main.filter': where: invalid expression: '[' was never closed",
        ],
        id="expr_syntax_error",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: route
      routes:
        ok: "event['ok']"
        bad: event.__dict__
offramps: {out: {type: stdout}}
links: {src: [main], main/ok: [out], main/bad: [out], main/default: [out]}
""",
        [
            "8:14: node 'main.route': routes.bad: attribute '__dict__' is not allowed",
        ],
        id="expr_in_route",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - op: set
      set: {meta.seen: 'True', host: "event.get('__host__')"}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "6:38: node 'main.set': set.host: dunder strings are not allowed",
        ],
        id="expr_in_set",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: python, fn: "hr_no_such_module:classify"}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:24: node 'main.classify': cannot load hr_no_such_module:classify: ModuleNotFoundError: No module named 'hr_no_such_module'",
        ],
        id="python_module_missing",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: python, fn: "hr_raises_at_import:classify"}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:24: node 'main.classify': loading failed: RuntimeError: database is down",
        ],
        id="python_module_raises",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: python, fn: "hr_stage_ok:clasify"}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:24: node 'main.clasify': cannot load hr_stage_ok:clasify: ImportError: module 'hr_stage_ok' has no attribute 'clasify'",
        ],
        id="python_attribute_missing",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main:
    - {op: python, fn: hr_stage_ok.classify}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "5:24: pipelines.main.0.fn: 'hr_stage_ok.classify' does not have the expected form (module:callable, imported with the config's folder first on sys.path)",
        ],
        id="python_fn_without_colon",
    ),
    pytest.param(
        """\
version: 1
onramps:
  src: {type: stdin, codec: jsonn}
pipelines: {main: [{op: filter}]}
offramps: {out: {type: stdot}}
links: {src: [main], main: [out]}
""",
        [
            f"3:29: unknown codec 'jsonn': did you mean 'json'? (known: {CODECS})",
            f"5:24: unknown offramp 'stdot': did you mean 'stdout'? (known: {OFFRAMPS})",
            "4:20: missing required key 'where' in operator 'filter' of node 'main.filter'",
        ],
        id="several_at_once",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main: [{op: python, fn: "hr_one_arg:classify"}, {op: python, fn: "hr_one_arg:Stage"}, {op: python, fn: "http:work"}]
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
""",
        [
            "4:27: node 'main.classify': cannot load hr_one_arg:classify: TypeError: hr_one_arg:classify must take (event, meta); its signature is (event)",
            "4:68: node 'main.Stage': cannot load hr_one_arg:Stage: TypeError: hr_one_arg:Stage.process must take (event, meta); its signature is (event)",
            "4:106: node 'main.work': cannot load http:work: ImportError: the stage module 'http' beside the config has the name of a module "
            "of Python's standard library; rename it (e.g. 'http_stages')",
        ],
        id="stage_signature_and_shadowing_module",
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  g:
    nodes: {f: {op: filter, where: "True"}}
    links: {in: null, f: 3}
offramps: {out: {type: stdout}}
links: {src: [g], g: [out]}
""",
        [
            "6:17: pipeline 'g': the targets of link 'in' must be a node id or a list of them, not NoneType",
            "6:26: pipeline 'g': the targets of link 'f' must be a node id or a list of them, not int",
        ],
        id="graph_link_targets_of_the_wrong_type",  # was: TypeError out of the loader
    ),
    pytest.param(
        """\
version: 1
onramps: {src: {type: stdin}}
pipelines:
  main: [{op: filter, where: "True"}, {op: route, routes: {errors: "True"}}]
  graph:
    nodes: {r: {op: route, routes: {a: "True"}}}
    links: {in: [r], r: [out]}
offramps: {out: {type: stdout}}
links: {src: [main, graph], main: [out], main/errors: [out], graph: [out]}
""",
        [
            "7:22: node 'r' (route) sends nothing to 'out': its events leave by r/a, r/default",
            "9:29: pipeline 'main' ends with 'route', which sends nothing to 'out': link main/errors, main/default instead",
        ],
        id="route_out_carries_nothing",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_config_reports_exact_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write_config(tmp_path, text)
    assert sorted(issues_of(path)) == sorted(f"{path}:{line}" for line in expected)


def test_every_message_names_the_file_written(tmp_path: Path) -> None:
    path = write_config(tmp_path, "version: 1\nonramps: {src: {type: stdin}}\nbogus: 1\n")
    (line,) = issues_of(path)
    assert line.startswith(f"{path}:3:1: unknown key 'bogus' in the top level")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert [str(i) for i in info.value.issues] == [f"{path}:1:1: cannot read config: [Errno 2] No such file or directory: '{path}'"]


def test_error_text_is_one_line_per_issue(tmp_path: Path) -> None:
    path = write_config(tmp_path, "version: 1\nonramps:\n  a: {type: fiel}\n  b: {type: stdin, codec: jsonn}\n")
    with pytest.raises(ConfigError) as info:
        load_file(path, env={})
    assert str(info.value).splitlines() == [
        f"{path}:3:13: unknown onramp 'fiel': did you mean 'file'? (known: {ONRAMPS})",
        f"{path}:4:27: unknown codec 'jsonn': did you mean 'json'? (known: {CODECS})",
    ]


def test_plugin_with_a_missing_module_names_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTINS["codecs"], "hr-absent", "headrace.plugins.codecs.hr_absent:Codec")
    path = write_config(tmp_path, "version: 1\nonramps:\n  src: {type: stdin, codec: hr-absent}\n")
    assert issues_of(path) == [
        f"{path}:3:29: codec 'hr-absent' needs the missing module 'headrace.plugins.codecs.hr_absent' (install headrace with the matching extra)"
    ]


def test_broken_plugin_is_an_issue_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTINS["codecs"], "hr-broken", "headrace.plugins.codecs.json:NoSuchCodec")
    path = write_config(tmp_path, "version: 1\nonramps:\n  src: {type: stdin, codec: hr-broken}\n")
    assert issues_of(path) == [
        f"{path}:3:29: codec 'hr-broken' cannot be loaded: AttributeError: module 'headrace.plugins.codecs.json' has no attribute 'NoSuchCodec'"
    ]


def test_paths_that_can_never_exist_are_reported_at_their_setting(tmp_path: Path) -> None:
    """Paths under a regular file (and a file path naming a folder) fail at start-up whatever is retried: check says so."""
    (tmp_path / "blocker.txt").write_text("a file, not a folder\n")
    (tmp_path / "plain.txt").write_text("not a socket\n")
    path = write_config(tmp_path, """\
version: 1
daemon: {state_dir: blocker.txt/state}
onramps:
  src: {type: file, config: {path: blocker.txt/in.ndjson}}
  sock: {type: unix, config: {path: plain.txt}}
  tail: {type: file, config: {path: ., follow: true}}
pipelines: {main: [{op: filter, where: 'True'}]}
offramps:
  out: {type: file, config: {path: blocker.txt/out.ndjson}}
  daily: {type: file, config: {path: "blocker.txt/sub/%Y-%m-%d.ndjson"}}
  ok: {type: file, config: {path: "out/{meta.host}.ndjson"}}
links: {src: [main], sock: [main], tail: [main], main: [out, daily, ok]}
""")
    blocker = tmp_path / "blocker.txt"
    assert issues_of(path) == [
        f"{path}:2:21: daemon.state_dir: {blocker / 'state'} can never be a folder: {blocker} is a file",
        f"{path}:4:36: onramp 'src': path: {blocker / 'in.ndjson'} can never exist: {blocker} is a file, not a folder",
        f"{path}:5:37: onramp 'sock': path: {tmp_path / 'plain.txt'} exists and is not a socket (the server replaces only a stale socket)",
        f"{path}:6:37: onramp 'tail': path: {tmp_path} is a folder, not a file",
        f"{path}:9:36: offramp 'out': path: {blocker / 'out.ndjson'} can never exist: {blocker} is a file, not a folder",
        f"{path}:10:38: offramp 'daily': path: {blocker / 'sub'} can never be a folder: {blocker} is a file",
    ]

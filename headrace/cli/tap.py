"""``headrace tap [URL] COMPONENT[/PORT]``: live events of one port of a running daemon."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from headrace.cli.top import admin_headers, base_url


def every_of(sample: str) -> int:
    """``1/100`` or ``100`` -> every 100th event."""
    text = sample.strip()
    if text.startswith("1/"):
        text = text[2:]
    n = int(text)
    if n < 1:
        raise ValueError(sample)
    return n


def run_tap(url: str, target: str, sample: str, limit: int | None, where: str | None, with_meta: bool, fmt: str,
            record: str | None = None, max_rate: float | None = None, token_file: str | None = None) -> int:  # fmt: skip
    component, _, port = target.partition("/")
    if record is not None:
        with_meta = True  # a recorded case keeps each event's meta
    try:
        every = every_of(sample)
    except ValueError:
        print(f"headrace tap: --sample {sample!r}: give 1/N or N (every N-th event)", file=sys.stderr)
        return 2
    query: dict[str, Any] = {"component": component, "port": port or "out", "every": every}
    if limit is not None:
        query["limit"] = limit
    if where:
        query["where"] = where
    if with_meta:
        query["meta"] = 1
    if max_rate is not None:
        query["max_rate"] = max_rate
    endpoint = f"{base_url(url)}/tap?{urllib.parse.urlencode(query)}"
    try:
        headers = admin_headers(token_file)
    except OSError as exc:
        print(f"headrace tap: --token-file: {exc}", file=sys.stderr)
        return 2
    try:
        resp = urllib.request.urlopen(urllib.request.Request(endpoint, headers=headers), timeout=None)
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error", "")
        except ValueError:
            why = ""
        print(f"headrace tap: {target}: {why or f'HTTP {exc.code}'}", file=sys.stderr)
        return 2 if exc.code == 422 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"headrace tap: cannot reach a headrace daemon at {base_url(url)}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    seen: list[dict[str, Any]] = []
    try:
        with resp:
            for line in resp:
                item = json.loads(line)
                if item.get("tap_end"):
                    print(f"headrace tap: {item['sent']} shown of {item['passed']} passed; {item['dropped']} dropped (a slow reader), "
                          f"{item.get('over_rate', 0)} sampled over --max-rate", file=sys.stderr)  # fmt: skip
                    break
                if record is not None:
                    seen.append(item)
                else:
                    show(item, fmt, with_meta)
    except KeyboardInterrupt:
        pass
    if record is not None:
        write_case(record, component, port or "out", seen)
        print(f"headrace tap: {len(seen)} event(s) recorded as a test case in {record} (headrace test)", file=sys.stderr)
    return 0


def write_case(path: str, component: str, port: str, items: list[dict[str, Any]]) -> None:
    """The tapped events as a ``headrace test`` case file: injected where they were seen (runs of
    equal meta as one injection each), expecting as many at that port. A scaffold to edit: the
    expectation says only how many; put what the events should become there."""
    import yaml

    injections: list[dict[str, Any]] = []
    for item in items:
        meta = {k: v for k, v in (item.get("meta") or {}).items() if k != "error"}
        if injections and injections[-1].get("meta", {}) == meta:
            injections[-1]["events"].append(item["event"])
        else:
            injections.append({"at": component, "events": [item["event"]], **({"meta": meta} if meta else {})})
    case = {"name": f"recorded from {component}/{port}", "inject": injections, "expect": [{"at": f"{component}/{port}", "count": len(items)}]}
    header = (f"# Recorded by `headrace tap {component}/{port} --record`: {len(items)} live event(s).\n"
              "# Edit the expectation (events, where, count) to what these events should become.\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + yaml.safe_dump({"tests": [case]} if items else {"tests": []}, allow_unicode=True, sort_keys=False))


def show(item: dict[str, Any], fmt: str, with_meta: bool) -> None:
    out = {"event": item["event"], "meta": item["meta"]} if with_meta else item["event"]
    if fmt == "json":
        print(json.dumps(out, ensure_ascii=False), flush=True)
    elif fmt == "pretty":
        print(f"-- {item['component']}/{item['port']}\n{json.dumps(out, ensure_ascii=False, indent=2)}", flush=True)
    else:
        import yaml

        print("---\n" + yaml.safe_dump(out, allow_unicode=True, sort_keys=False).rstrip(), flush=True)

"""What the Kafka onramp and offramp share: checking the ``client:`` options passed to aiokafka.

``client:`` reaches the aiokafka constructor as keyword arguments. An option it does not
take would fail only when the daemon starts, and one that headrace sets itself (for the
consumer: the group, offset commits; for the producer: acks, batching) would either clash
or quietly break at-least-once delivery. ``check`` refuses both, with the options allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any


def check_client_options(client_class: Any, options: dict[str, Any], managed: Iterable[str]) -> None:
    """Raise ValueError naming each option of ``options`` that ``client_class`` does not take
    or that headrace manages (``managed``: the setting to use instead, if any)."""
    taken = {p for p in inspect.signature(client_class.__init__).parameters if p not in ("self", "loop")}
    own = set(managed)
    problems = []
    for key in options:
        if key in own:
            problems.append(f"'{key}' is set by headrace (use the onramp/offramp's own settings)")
        elif key not in taken:
            allowed = ", ".join(sorted(taken - own))
            problems.append(f"'{key}' is not an option of {client_class.__name__} (allowed: {allowed})")
    if problems:
        raise ValueError("client: " + "; ".join(problems))

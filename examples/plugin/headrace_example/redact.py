"""``op: redact``: replace the values of named top-level fields with a mask.

What an operator plugin needs: a ``Config`` model (unknown keys are refused for you), the
class attributes the docs and ``headrace plugins`` show (``name``, ``summary``,
``example``), and ``process``, which gets a batch of events and returns the ones for the
``out`` port. Anything for another port goes through ``emit``.
"""

from __future__ import annotations

from pydantic import Field

from headrace.contract import Emit, Ev, Operator, PluginConfig, PluginContext


class RedactConfig(PluginConfig):
    fields: list[str] = Field(min_length=1, description="top-level keys whose values are replaced")
    mask: str = Field("***", description="what replaces them")


class RedactOperator(Operator):
    name = "redact"
    Config = RedactConfig
    summary = "replace the values of named fields with a mask"
    example = "{op: redact, fields: [password, token]}"
    default_placement = "any"  # cheap CPU work: the runtime may run it on the loop or the workers

    def __init__(self, node_id: str, config: RedactConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.fields = frozenset(config.fields)
        self.mask = config.mask

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        out = []
        for ev in evs:
            value = ev.value
            if not isinstance(value, dict):  # one bad event goes to err; the batch goes on
                emit("err", ev.fail(self.id, TypeError(f"redact needs an object, got {type(value).__name__}")))
                continue
            if not self.fields.isdisjoint(value):
                # Assigning ev.value a new object tells the runtime to encode it again; changing
                # the dict in place would not (the original bytes would leave).
                ev.value = {k: (self.mask if k in self.fields else v) for k, v in value.items()}
            out.append(ev)  # an event left as it came leaves as the bytes it came as
        return out

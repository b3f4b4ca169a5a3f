"""What a plugin implements and may use. This package imports nothing of the runtime or of the
built-in plugins: it is the layer both stand on.

- ``Operator`` (``stage``): processes a batch of ``Ev`` events, emits to ports.
- ``Onramp`` and ``OnrampSink`` (``source``): produce records into the graph.
- ``Offramp``, ``PartialWrite`` (``sink``): accept encoded records, say what the peer confirmed.
- ``Codec``, ``DecodeError`` (``codec``): bytes <-> value, one record at a time.
- ``Preprocessor``, ``Postprocessor`` (``framing``): streams <-> records.
- ``PluginConfig`` (``config``), ``PluginContext`` (``context``): configuration and services.
- ``AckRef``, ``HeldAcks`` (``acks``): delivery tracking, for stages that hold events.
- ``Duration``, ``Size`` (``units``), ``compile_expr`` (``expr``), ``Backoff`` (``backoff``).
- ``SettingError``, ``check_file_path``, ``check_folder_path`` (``paths``): what a plugin's
  ``check()`` raises about one setting, and checks of paths that can never exist.

Third-party plugins import from ``headrace.contract``. (``headrace.plugins.base`` and
``headrace.contract.stage``, the paths before 0.2, are gone; see docs/plugins.md.)
"""

from __future__ import annotations

from headrace.contract.acks import AckRef, HeldAcks, MergedAck
from headrace.contract.backoff import Backoff
from headrace.contract.codec import Codec, DecodeError, ViewLoader
from headrace.contract.config import NoConfig, PluginConfig
from headrace.contract.context import MetricRegistry, PluginContext
from headrace.contract.expr import ExpressionError, compile_expr
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.paths import SettingError, check_file_path, check_folder_path
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.stage import STAGE_ERRORS, Emit, Ev, Operator, Placement
from headrace.contract.units import Duration, Size

__all__ = [
    "STAGE_ERRORS",
    "AckRef",
    "Backoff",
    "Codec",
    "DecodeError",
    "Duration",
    "Emit",
    "Ev",
    "ExpressionError",
    "HeldAcks",
    "MergedAck",
    "MetricRegistry",
    "NoConfig",
    "Offramp",
    "Onramp",
    "OnrampSink",
    "Operator",
    "PartialWrite",
    "Placement",
    "PluginConfig",
    "PluginContext",
    "Postprocessor",
    "Preprocessor",
    "Rejections",
    "SettingError",
    "Size",
    "ViewLoader",
    "check_file_path",
    "check_folder_path",
    "compile_expr",
]

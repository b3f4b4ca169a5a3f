"""headrace: a declarative stream-processing daemon for Python."""

from __future__ import annotations

from headrace import metric
from headrace._emit import emit

__all__ = ["__version__", "emit", "metric"]
__version__ = "0.1.0"

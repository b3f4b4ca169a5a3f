"""Testing support: ``headrace test`` for configs, and contract suites for plugin authors.

- ``run_config_tests(path)``: the unit tests declared with a config (``headrace test``).
- ``operator_contract(cls, config)``, ``codec_contract(cls, samples)``: the invariants
  every operator or codec must hold; call them from your plugin's own tests.
"""

from __future__ import annotations

from headrace.testing.contract import codec_contract, operator_contract
from headrace.testing.runner import run_config_tests

__all__ = ["codec_contract", "operator_contract", "run_config_tests"]

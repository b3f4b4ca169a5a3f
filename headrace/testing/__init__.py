"""Testing support: ``headrace test`` for configs, and contract suites for plugin authors.

- ``run_config_tests(path)``: the unit tests declared with a config (``headrace test``).
- ``operator_contract(cls, config)``, ``codec_contract(cls, samples)``: the invariants
  every operator or codec must hold; call them from your plugin's own tests.
- ``onramp_contract(cls, config, peer)``, ``offramp_contract(cls, config, peer)``: the same for
  onramps and offramps, with a peer (``OnrampPeer``, ``OfframpPeer``) for the other side.
"""

from __future__ import annotations

from headrace.testing.contract import codec_contract, operator_contract
from headrace.testing.offramp_contract import OfframpPeer, offramp_contract
from headrace.testing.onramp_contract import OnrampPeer, onramp_contract
from headrace.testing.runner import run_config_tests

__all__ = ["OfframpPeer", "OnrampPeer", "codec_contract", "offramp_contract", "onramp_contract", "operator_contract", "run_config_tests"]

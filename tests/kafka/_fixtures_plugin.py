"""Makes the Kafka fixtures available to this directory's tests as a plugin.

Named by ``pytest_plugins`` in the test modules so they run with or without a
conftest.  When tests/conftest.py imports ``tests.support.fixtures`` too, its
copies are the more specific ones and win, so one session broker serves all.
(A separate module, so that a conftest that already imported
``tests.support.fixtures`` does not trigger pytest's "already imported,
cannot be rewritten" warning.)
"""

from tests.support.fixtures import *  # noqa: F403

"""A tap looks at no more than ``max_rate`` sampled events a second; the rest are counted."""

from __future__ import annotations

from headrace.runtime.batch import Batch
from headrace.runtime.tap import Tap


def _batch(n: int) -> Batch:
    return Batch.decoded(list(range(n)), None, codec="json", origin="src", group="src")


def test_a_tap_over_its_rate_counts_instead_of_decoding() -> None:
    tap = Tap("src", "out", every=1, max_rate=100)
    tap.last -= 0.5  # half a second since the tap was attached: 50 may be looked at
    tap.offer(_batch(1000))
    assert tap.taken == 50 and tap.over_rate == 950 and tap.seen == 1000
    assert [tap.queue.get_nowait()["event"] for _ in range(3)] == [0, 1, 2]
    tap.last -= 10  # a long pause fills the bucket to one second's worth, no more
    tap.offer(_batch(1000))
    assert tap.taken == 150 and tap.over_rate == 1850


def test_no_cap_looks_at_every_sampled_event() -> None:
    tap = Tap("src", "out", every=10, max_rate=0)
    tap.offer(_batch(1000))
    assert tap.taken == 100 and tap.over_rate == 0

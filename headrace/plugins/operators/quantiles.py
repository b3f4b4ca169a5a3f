"""A percentile over a window in bounded memory: exact while small, then a log-bucket sketch.

The first ``EXACT_VALUES`` values are kept as they are, and a percentile of them is exact
(nearest rank). Beyond that they go into buckets whose bounds grow by a factor ``GAMMA``
(the DDSketch idea): every value in a bucket is within ``ACCURACY`` (1 %) of the bucket's
representative, so the percentile returned is within 1 % of the exact one (relative to its
magnitude; 0 is exact). At most ``MAX_BUCKETS`` buckets are kept per sign; more (values
spread over more than about 17 orders of magnitude) merge the buckets nearest to zero, which
then lose that accuracy. Memory: at most about ``EXACT_VALUES`` x 32 bytes, or
``2 x MAX_BUCKETS`` x 100 bytes, whatever the number of values.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

EXACT_VALUES = 1024
ACCURACY = 0.01
GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
MAX_BUCKETS = 2048
VALUE_BYTES = 32  # a kept value: a list slot and a number
BUCKET_BYTES = 100  # a bucket: a dict entry, its index and its count


class QuantileSketch:
    __slots__ = ("floors", "n", "negative", "positive", "values", "zeros")

    def __init__(self) -> None:
        self.values: list[Any] | None = []  # exact until EXACT_VALUES; then None and the buckets count
        self.positive: dict[int, int] = {}
        self.negative: dict[int, int] = {}
        self.zeros = 0
        self.n = 0
        self.floors = {True: -(2**63), False: -(2**63)}  # per sign (positive?): smaller indices count in this bucket

    def nbytes(self) -> int:
        if self.values is not None:
            return VALUE_BYTES * len(self.values)
        return BUCKET_BYTES * (len(self.positive) + len(self.negative))

    def add(self, v: Any) -> int:
        """Count ``v`` (a finite number); returns by how many bytes ``nbytes`` grew (negative when it shrank)."""
        self.n += 1
        values = self.values
        if values is not None:
            if len(values) < EXACT_VALUES:
                values.append(v)
                return VALUE_BYTES
            before = VALUE_BYTES * len(values)
            self.values = None
            for x in values:
                self._bucket(x)
            self._bucket(v)
            return self.nbytes() - before
        return BUCKET_BYTES * self._bucket(v)

    def _bucket(self, v: Any) -> int:
        """Count ``v`` in its bucket; returns the number of buckets added (0 or 1; a merge makes it 0)."""
        if v == 0:
            self.zeros += 1
            return 0
        sign = v > 0
        store = self.positive if sign else self.negative
        index = max(math.ceil(math.log(abs(v)) / _LOG_GAMMA), self.floors[sign])
        if index in store:
            store[index] += 1
            return 0
        store[index] = 1
        if len(store) <= MAX_BUCKETS:
            return 1
        lowest, second = heapq.nsmallest(2, store)  # the two buckets nearest to zero become one, the new floor
        store[second] += store.pop(lowest)
        self.floors[sign] = second
        return 0

    def quantile(self, p: float) -> Any:
        """The nearest-rank ``p`` quantile, or None without values."""
        if not self.n:
            return None
        rank = max(math.ceil(p * self.n) - 1, 0)  # 0-based
        if self.values is not None:
            return sorted(self.values)[rank]
        for index in sorted(self.negative, reverse=True):  # the most negative first
            rank -= self.negative[index]
            if rank < 0:
                return -_representative(index)
        rank -= self.zeros
        if rank < 0:
            return 0
        for index in sorted(self.positive):
            rank -= self.positive[index]
            if rank < 0:
                return _representative(index)
        return _representative(max(self.positive))  # not reached: the counts add up to n


def _representative(index: int) -> float:
    """The value within ``ACCURACY`` of every magnitude in ``(GAMMA**(index-1), GAMMA**index]``."""
    return 2 * math.exp(index * _LOG_GAMMA) / (GAMMA + 1)

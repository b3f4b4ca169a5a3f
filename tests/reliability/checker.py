"""Conservation by identity: which of the records sent came out, how often, and where.

Every input record of a reliability test carries a unique id. After the fault, the test
collects the ids found at every output (offramps, and the dead-letter offramp that the
``err`` ports feed) and asks :func:`conserve` for a verdict::

    report = conserve(sent=range(n), found={"file": file_ids, "kafka": topic_ids}, fanout=True,
                      dead_letter=dlq_ids, window=window, guarantee=AT_LEAST_ONCE)
    assert report.ok, report.summary()

* **lost**: sent, and found nowhere (neither at an output nor in the dead letter);
* **duplicated**: found more often than it should be (per output with ``fanout``,
  else across all outputs and the dead letter together), with the number of extra copies;
* **unexpected**: found, but never sent (corruption, or records of another test);
* **misrouted**: with ``expect_dead``, records that reached an output although they should
  have gone to the dead letter, or went to the dead letter although they should not.

Duplicates are a violation unless the guarantee is at least once, and then only up to
``window``: the number of records in flight at the fault (read by the daemon but not
committed), which the test computes from the daemon's own metrics just before the fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

AT_LEAST_ONCE = "at-least-once"
EXACTLY_ONCE = "exactly-once"  # what a test expects where no fault can cause a redelivery (e.g. a worker kill)
AT_MOST_ONCE = "at-most-once"  # sources without acks: a crash may lose what was in flight

Id = Hashable


@dataclass
class Report:
    sent: int
    found: dict[str, int]  # records found per output (copies included)
    dead: int  # records found in the dead letter
    lost: set[Id]
    duplicated: dict[Id, int]  # id -> extra copies
    unexpected: set[Id]
    misrouted: set[Id]
    window: int
    guarantee: str
    problems: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return sum(self.duplicated.values())

    @property
    def ok(self) -> bool:
        return not self.problems

    def figures(self) -> dict[str, int]:
        return {"sent": self.sent, "lost": len(self.lost), "duplicates": self.duplicates, "unexpected": len(self.unexpected),
                "dead": self.dead, "window": self.window}  # fmt: skip

    def summary(self) -> str:
        found = ", ".join(f"{k}={v}" for k, v in self.found.items())
        head = (f"{self.guarantee}: sent={self.sent} found[{found}] dead={self.dead} lost={len(self.lost)} "
                f"duplicates={self.duplicates} (window {self.window}) unexpected={len(self.unexpected)} misrouted={len(self.misrouted)}")  # fmt: skip
        if not self.problems:
            return head + ": OK"
        return head + "\n  " + "\n  ".join(self.problems)


def _sample(ids: Iterable[Id], k: int = 12) -> str:
    items = list(ids)
    try:
        items.sort()  # type: ignore[call-overload]
    except TypeError:
        items.sort(key=repr)
    more = f" ... (+{len(items) - k})" if len(items) > k else ""
    return ", ".join(map(repr, items[:k])) + more


def conserve(
    sent: Iterable[Id],
    found: Mapping[str, Iterable[Id]] | Iterable[Id],
    dead_letter: Iterable[Id] = (),
    *,
    window: int = 0,
    guarantee: str = AT_LEAST_ONCE,
    fanout: bool = False,
    expect_dead: Iterable[Id] | None = None,
) -> Report:
    """Compare the ids sent with the ids found at the outputs and in the dead letter.

    ``found`` is one iterable of ids, or ``{output name: ids}``. Without ``fanout`` each
    record should be found exactly once across all outputs and the dead letter together;
    with ``fanout`` every output should hold every record that was not dead-lettered (an
    event routed to several offramps). ``window`` bounds the duplicates tolerated with the
    at-least-once guarantee; under any other guarantee a duplicate is a violation.
    ``expect_dead``: the ids that must end in the dead letter (and, without ``fanout``, nowhere else).
    """
    sent_counts = Counter(sent)
    problems: list[str] = []
    repeated_input = [i for i, c in sent_counts.items() if c > 1]
    if repeated_input:
        problems.append(f"the test sent ids more than once (ids must be unique): {_sample(repeated_input)}")
    sent_ids = set(sent_counts)
    outputs: dict[str, Counter[Id]] = (
        {name: Counter(ids) for name, ids in found.items()} if isinstance(found, Mapping) else {"out": Counter(found)}
    )
    dead = Counter(dead_letter)

    duplicated: Counter[Id] = Counter()
    if fanout:
        for counts in [*outputs.values(), dead]:
            for i, c in counts.items():
                if c > 1:
                    duplicated[i] += c - 1
    else:
        total: Counter[Id] = Counter(dead)
        for counts in outputs.values():
            total.update(counts)
        for i, c in total.items():
            if c > 1:
                duplicated[i] += c - 1

    everywhere = set(dead)
    for counts in outputs.values():
        everywhere |= set(counts)
    unexpected = everywhere - sent_ids
    if fanout:  # every output must hold every record that did not go to the dead letter
        lost: set[Id] = set()
        for counts in outputs.values():
            lost |= sent_ids - set(counts) - set(dead)
    else:
        lost = sent_ids - everywhere

    misrouted: set[Id] = set()
    if expect_dead is not None:
        want = set(expect_dead)
        delivered = set().union(*(set(c) for c in outputs.values())) if outputs else set()
        # with fan-out, a record one offramp refused still reaches the others: only "nowhere else" is checked without it
        wrongly_delivered = set() if fanout else want & delivered
        wrongly_dead = set(dead) - want
        missing_dead = (want - set(dead)) & sent_ids
        misrouted = wrongly_delivered | wrongly_dead | missing_dead
        if wrongly_delivered:
            problems.append(f"{len(wrongly_delivered)} record(s) reached an output instead of the dead letter: {_sample(wrongly_delivered)}")
        if wrongly_dead:
            problems.append(f"{len(wrongly_dead)} record(s) went to the dead letter but should not have: {_sample(wrongly_dead)}")
        if missing_dead:
            problems.append(f"{len(missing_dead)} record(s) expected in the dead letter are not there: {_sample(missing_dead)}")

    if lost:
        problems.append(f"{len(lost)} record(s) lost: {_sample(lost)}")
    if unexpected:
        problems.append(f"{len(unexpected)} record(s) found that were never sent: {_sample(unexpected)}")
    dups = sum(duplicated.values())
    if dups:
        if guarantee != AT_LEAST_ONCE:
            problems.append(f"{dups} duplicate(s) under a {guarantee} guarantee: {_sample(duplicated)}")
        elif dups > window:
            problems.append(f"{dups} duplicate(s) exceed the in-flight window of {window} at the fault: {_sample(duplicated)}")
    return Report(
        sent=len(sent_ids), found={name: sum(c.values()) for name, c in outputs.items()}, dead=sum(dead.values()),
        lost=lost, duplicated=dict(duplicated), unexpected=unexpected, misrouted=misrouted, window=window,
        guarantee=guarantee, problems=problems,
    )  # fmt: skip

"""The Kafka onramp restarted in place, as the runtime restarts a source whose run() failed:
``stop()``, then ``start()`` and ``run()`` on the same instance (found by the onramp contract suite)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from headrace.contract.context import PluginContext
from headrace.plugins.onramps.kafka import KafkaOnramp, KafkaOnrampConfig
from tests.support.kafka_broker import KafkaBroker


class Hands:
    """Takes what the onramp hands over; the test settles each token itself."""

    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.count = 0

    async def records(self, payloads: list[bytes], metas: Any = None, ack: Any = None, group: Any = None, refused: Any = None,
                      wire: Any = None) -> None:  # fmt: skip
        self.count += len(payloads)
        self.tokens.append(ack)


async def _run_until(onramp: KafkaOnramp, n: int) -> Hands:
    hands = Hands()
    await onramp.start()
    run = asyncio.ensure_future(onramp.run(hands))  # type: ignore[arg-type]
    deadline = asyncio.get_running_loop().time() + 20
    while hands.count < n:
        assert not run.done(), run.exception()
        assert asyncio.get_running_loop().time() < deadline, f"{hands.count} of {n} records within 20s"
        await asyncio.sleep(0.01)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    return hands


def test_a_restarted_onramp_commits_what_it_redelivered_and_got_acked(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any) -> None:
    topic = kafka_topic(1)
    kafka_broker.produce(topic, [(None, b"%d" % i) for i in range(10)])
    group = f"restart-{topic}"
    cfg = KafkaOnrampConfig.model_validate({"brokers": kafka_broker.bootstrap, "topics": [topic], "group_id": group, "batch": 5,
                                            "commit_interval": "60s", "session_timeout": "1s", "heartbeat_interval": "200ms"})  # fmt: skip

    async def scenario() -> None:
        onramp = KafkaOnramp(cfg, PluginContext("in", tmp_path))
        first = await _run_until(onramp, 10)
        onramp.fail(first.tokens[0])  # offsets 0-4 could not be delivered (say, the last-resort file was full)
        for token in first.tokens[1:]:
            onramp.ack(token)
        await onramp.stop()
        assert await kafka_broker.acommitted(group, topic) in ({}, {0: 0}), "nothing past a failed record is committed"
        again = await _run_until(onramp, 10)  # the runtime's restart: the same instance, from the committed offset
        for token in again.tokens:
            onramp.ack(token)
        await onramp.stop()
        assert await kafka_broker.acommitted(group, topic) == {0: 10}, "every record was redelivered and acked"

    asyncio.run(scenario())

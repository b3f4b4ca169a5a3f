"""pytest fixtures around :class:`tests.support.kafka_broker.KafkaBroker`.

Use from a conftest with ``from tests.support.fixtures import *``.

* ``kafka_broker`` (session): one started tansu broker shared by the run.
  Do not pause or kill it; use ``fresh_kafka_broker`` for fault tests.
* ``fresh_kafka_broker`` (function): a broker of the test's own (~20 ms to
  start), stopped after the test; pause, resume or kill it freely.
* ``kafka_topic`` (function): factory ``kafka_topic(partitions=1, prefix="t")``
  creating a uniquely named topic on ``kafka_broker`` and returning its name;
  topics are deleted after the test.
* ``rabbitmq`` (function, over one node for the run): a RabbitMQ node
  (:class:`tests.support.rabbitmq.RabbitMQ`), running. It boots in 5-8 s, so the
  modules that need one (the amqp plugin's tests, the connector contracts) share
  it; each test names its own queues. A test may stop and start it (an outage);
  one that left it stopped (it failed meanwhile) gets it started again for the next.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.kafka_broker import KafkaBroker
from tests.support.rabbitmq import RabbitMQ

__all__ = ["KafkaTopicFactory", "fresh_kafka_broker", "kafka_broker", "kafka_topic", "rabbitmq", "rabbitmq_node"]


class KafkaTopicFactory(Protocol):
    def __call__(self, partitions: int = 1, *, prefix: str = "t") -> str: ...


class _TopicFactory:
    def __init__(self, broker: KafkaBroker, test_name: str) -> None:
        self._broker = broker
        self._test = re.sub(r"[^A-Za-z0-9._-]+", "-", test_name)[:60].strip("-")
        self.created: list[str] = []

    def __call__(self, partitions: int = 1, *, prefix: str = "t") -> str:
        if self._broker.is_paused:
            raise RuntimeError("the shared kafka_broker is paused; fault tests must use fresh_kafka_broker")
        name = f"{prefix}-{self._test}-{uuid.uuid4().hex[:10]}"
        self._broker.create_topic(name, partitions)
        self.created.append(name)
        return name

    def cleanup(self) -> None:
        if not self._broker.is_running or self._broker.is_paused:
            return
        for name in self.created:
            with contextlib.suppress(Exception):  # best effort; memory storage anyway
                self._broker.delete_topic(name)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = KafkaBroker(log_path=log)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topic(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Iterator[KafkaTopicFactory]:
    factory = _TopicFactory(kafka_broker, request.node.name)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """The one RabbitMQ node of the run, started at its first use; tests take it through ``rabbitmq``."""
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def rabbitmq(rabbitmq_node: RabbitMQ) -> RabbitMQ:
    if rabbitmq_node.proc is None or rabbitmq_node.proc.poll() is not None:  # a test stopped it and failed before starting it again
        rabbitmq_node.stop()
        rabbitmq_node.start()
    return rabbitmq_node

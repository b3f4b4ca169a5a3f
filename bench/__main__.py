"""``make bench``: every benchmark, each printing its ratio against a baseline measured in the same run."""

from __future__ import annotations

import sys
import time

from bench import (
    amqp_bench,
    avro_bench,
    kafka,
    kafka_k,
    metrics,
    mqtt_bench,
    nats_streams,
    otlp_bench,
    postgres_bench,
    redis_streams,
    s3_bench,
    workers,
)


def main() -> int:
    only = sys.argv[1:]
    print(f"headrace benchmarks ({time.strftime('%Y-%m-%d %H:%M')})")
    for fn in [*workers.ALL, kafka.kafka_benches, kafka_k.kafka_k_benches, redis_streams.redis_benches, nats_streams.nats_benches, mqtt_bench.mqtt_benches, otlp_bench.otlp_benches, postgres_bench.postgres_benches, s3_bench.s3_benches, avro_bench.avro_benches, amqp_bench.amqp_benches, metrics.scrape_under_load, metrics.tap_cost]:
        if only and fn.__name__ not in only:
            continue
        try:
            for text in fn():
                print(text, flush=True)
        except Exception as exc:  # one broken bench must not hide the others
            print(f"{fn.__name__}: FAILED: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The official SimpleConsumer never acknowledging: each message comes back after its invisible time with the next
delivery attempt, until the broker moves it to the group's dead-letter topic after the group's last attempt.

usage: consumer_unacked.py ENDPOINT TOPIC GROUP LAST_ATTEMPT SECONDS
prints {"ok": true, "deliveries": [[body, attempt], ...]} after receiving (1 s invisible time) until 3 s after
LAST_ATTEMPT was seen (time for one more attempt, which must not come), or SECONDS at most
"""
import sys
import time

from rocketmq import FilterExpression, SimpleConsumer

from sdk import config, emit, fail


def main():
    endpoint, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    last_attempt, seconds = int(sys.argv[4]), float(sys.argv[5])
    consumer = SimpleConsumer(config(endpoint), group, {topic: FilterExpression("*")}, await_duration=1)
    try:
        consumer.startup()
    except Exception as e:  # noqa: BLE001 - the test shows why
        fail(f"simple consumer startup failed: {e}")
    deliveries = []
    end = time.time() + seconds
    while time.time() < end:
        for m in consumer.receive(16, 1):
            deliveries.append([m.body.decode(), m.delivery_attempt])
            if m.delivery_attempt == last_attempt:
                end = min(end, time.time() + 3)
    consumer.shutdown()
    emit(ok=True, deliveries=deliveries)


if __name__ == "__main__":
    main()

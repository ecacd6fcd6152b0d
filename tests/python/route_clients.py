"""Starts an official Producer and SimpleConsumer against a broker and shuts them down: QueryRoute, Telemetry
(settings handshake), Heartbeat and NotifyClientTermination as the SDK really calls them.

usage: route_clients.py ENDPOINT TOPIC GROUP
prints {"producer": "started", ...} then {"ok": true, "route": [...queue descriptions...]}
"""
import sys
import time

from rocketmq import FilterExpression, Producer, SimpleConsumer

from sdk import config, emit, fail


def main():
    endpoint, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    producer = Producer(config(endpoint), (topic,))
    try:
        producer.startup()
    except Exception as e:  # noqa: BLE001 - the test shows why
        fail(f"producer startup failed: {e}")
    emit(producer="started")
    consumer = SimpleConsumer(config(endpoint), group, {topic: FilterExpression("*")}, await_duration=5)
    try:
        consumer.startup()
    except Exception as e:  # noqa: BLE001
        fail(f"simple consumer startup failed: {e}")
    emit(consumer="started")
    # Past the SDK's first heartbeat and settings resend (+1 s).
    time.sleep(1.5)
    consumer.shutdown()
    producer.shutdown()
    emit(ok=True)


if __name__ == "__main__":
    main()

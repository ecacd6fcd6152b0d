"""The official SimpleConsumer against a broker: receive every message, change one message's invisible time (the
new receipt handle works, the old one is refused), acknowledge the others, and see the changed one come back with
a higher delivery attempt.

usage: consumer_simple.py ENDPOINT TOPIC GROUP COUNT
prints {"ok": true, "received": [...bodies...], "old_handle_failed": bool, "redelivered": body,
        "redelivered_attempt": n}
"""
import sys
import time

from rocketmq import FilterExpression, SimpleConsumer

from sdk import config, emit, fail


def main():
    endpoint, topic, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    consumer = SimpleConsumer(config(endpoint), group, {topic: FilterExpression("*")}, await_duration=2)
    try:
        consumer.startup()
    except Exception as e:  # noqa: BLE001 - the test shows why
        fail(f"simple consumer startup failed: {e}")
    received = {}
    deadline = time.time() + 20
    while len(received) < count and time.time() < deadline:
        for m in consumer.receive(16, 30):
            body = m.body.decode()
            if body in received:
                fail(f"{body} received twice while invisible")
            if m.delivery_attempt != 1:
                fail(f"{body}: first delivery has attempt {m.delivery_attempt}")
            received[body] = m
    if len(received) < count:
        fail(f"received only {sorted(received)}")
    first = received[sorted(received)[0]]
    old = first.receipt_handle
    consumer.change_invisible_duration(first, 30)
    new = first.receipt_handle
    if not new or new == old:
        fail("ChangeInvisibleDuration gave no new receipt handle")
    first.receipt_handle = old
    try:
        consumer.ack(first)
        old_failed = False
    except Exception:  # noqa: BLE001 - the stale handle must be refused
        old_failed = True
    first.receipt_handle = new
    consumer.change_invisible_duration(first, 1)  # the new handle works; back in a second
    for body, m in received.items():
        if m is not first:
            consumer.ack(m)
    redelivered, attempt = None, None
    deadline = time.time() + 15
    while redelivered is None and time.time() < deadline:
        for m in consumer.receive(16, 30):
            redelivered, attempt = m.body.decode(), m.delivery_attempt
            consumer.ack(m)
    consumer.shutdown()
    emit(ok=True, received=sorted(received), old_handle_failed=old_failed, redelivered=redelivered,
         redelivered_attempt=attempt)


if __name__ == "__main__":
    main()

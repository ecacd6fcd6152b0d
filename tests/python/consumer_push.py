"""An official PushConsumer that reports every message its listener sees, until the test kills it.

usage: consumer_push.py ENDPOINT TOPIC GROUP NAME MODE
MODE "ok" succeeds every message; "fail-first" fails each message's first delivery (the SDK nacks it with
ChangeInvisibleDuration and its backoff) and succeeds later ones.
prints {"started": true}, then {"consumed": true, "body": ..., "attempt": n, "ok": bool, "consumer": NAME} per call
"""
import sys
import threading
import time

from rocketmq import ConsumeResult, FilterExpression, MessageListener, PushConsumer

from sdk import config, emit, fail


# The SDK consumes on several threads: one JSON line at a time, never interleaved.
EMIT = threading.Lock()


class Listener(MessageListener):
    def __init__(self, name, mode):
        self.name, self.mode = name, mode
        self.seen = set()
        self.lock = threading.Lock()

    def consume(self, message):
        body = message.body.decode()
        with self.lock:
            first = body not in self.seen
            self.seen.add(body)
        ok = not (self.mode == "fail-first" and first)
        with EMIT:
            emit(consumed=True, body=body, attempt=message.delivery_attempt, ok=ok, consumer=self.name)
        return ConsumeResult.SUCCESS if ok else ConsumeResult.FAILURE


def main():
    endpoint, topic, group, name, mode = sys.argv[1:6]
    consumer = PushConsumer(config(endpoint), group, Listener(name, mode), {topic: FilterExpression("*")})
    try:
        consumer.startup()
    except Exception as e:  # noqa: BLE001 - the test shows why
        fail(f"push consumer startup failed: {e}")
    emit(started=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()

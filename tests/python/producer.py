"""The official Python Producer sending every RocketMQ 5 message type to a Comet broker.

usage: producer.py MODE ENDPOINT TOPIC [ARGS...]
  normal N              N messages, tag "tag-<i % 2>", keys "key-<i>", property i=<i>; body "normal-<i>"
  fifo GROUPS N         N messages per message group g0..g<GROUPS-1>, interleaved; body "<group>-<i>"
  delay SECONDS         one message delivered SECONDS from now; body "delayed"
  transaction           one half committed (body "committed") and one rolled back (body "rolled-back")
  orphan WAIT           one half left unresolved (body "orphan"); the checker answers COMMIT; waits up to WAIT
                        seconds for the check-back, then a moment for the EndTransaction to land
Every sent message is printed as {"sent": body, "message_id": ..., "offset": ..., "transaction_id": ...}; the last
line is {"ok": true, ...}.
"""
import sys
import threading
import time

from rocketmq import Message, Producer, TransactionChecker, TransactionResolution

from sdk import config, emit, fail


class Checker(TransactionChecker):
    """Answers COMMIT to every check-back and reports it."""

    def __init__(self):
        self.checked = threading.Event()

    def check(self, message):
        emit(checked=message.message_id, topic=message.topic, body=message.body.decode())
        self.checked.set()
        return TransactionResolution.COMMIT


def message(topic, body):
    m = Message()
    m.topic = topic
    m.body = body.encode()
    return m


def report(body, receipt):
    emit(sent=body, message_id=receipt.message_id, offset=receipt.offset,
         transaction_id=receipt.transaction_id)


def main():
    mode, endpoint, topic, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    checker = Checker()
    producer = Producer(config(endpoint), (topic,), checker=checker)
    try:
        producer.startup()
    except Exception as e:  # noqa: BLE001 - the test shows why
        fail(f"producer startup failed: {e}")
    try:
        if mode == "normal":
            for i in range(int(args[0])):
                m = message(topic, f"normal-{i}")
                m.tag = f"tag-{i % 2}"
                m.keys = f"key-{i}"
                m.add_property("i", str(i))
                report(f"normal-{i}", producer.send(m))
        elif mode == "fifo":
            groups, n = int(args[0]), int(args[1])
            for i in range(n):
                for g in range(groups):
                    m = message(topic, f"g{g}-{i}")
                    m.message_group = f"g{g}"
                    report(f"g{g}-{i}", producer.send(m))
        elif mode == "delay":
            m = message(topic, "delayed")
            due = int(time.time()) + int(args[0])
            m.delivery_timestamp = due
            report("delayed", producer.send(m))
            emit(due_seconds=due)
        elif mode == "transaction":
            for body, commit in (("committed", True), ("rolled-back", False)):
                tx = producer.begin_transaction()
                report(body, producer.send(message(topic, body), tx))
                tx.commit() if commit else tx.rollback()
        elif mode == "orphan":
            tx = producer.begin_transaction()
            report("orphan", producer.send(message(topic, "orphan"), tx))
            if not checker.checked.wait(timeout=float(args[0])):
                fail("no check-back arrived")
            # The checker's EndTransaction is sent asynchronously after check() returns.
            time.sleep(1.0)
        else:
            fail(f"unknown mode {mode}")
    except Exception as e:  # noqa: BLE001
        fail(f"{mode} send failed: {e!r}")
    finally:
        producer.shutdown()
    emit(ok=True)


if __name__ == "__main__":
    main()

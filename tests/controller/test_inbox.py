"""controller.inbox: per-device backlogs, and `restore` after a failed reconcile."""

import base64
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from controller.inbox import Inbox
from shared.messages import Ack


def ack(generation: int, device_id: str = "pi-a") -> Ack:
    nonce = base64.b64encode(os.urandom(16)).decode()
    return Ack(
        device_id=device_id,
        ts=datetime.now(UTC),
        nonce=nonce,
        generation=generation,
        result="applied",
    )


def generations(messages: Sequence[object]) -> list[int]:
    return [m.generation for m in messages if isinstance(m, Ack)]


def test_take_hands_out_oldest_first_and_empties_the_backlog() -> None:
    inbox = Inbox()
    for n in (1, 2, 3):
        inbox.put("pi-a", ack(n))
    inbox.put("pi-b", ack(9, "pi-b"))
    assert generations(inbox.take("pi-a")) == [1, 2, 3]
    assert inbox.take("pi-a") == []
    assert len(inbox) == 1


def test_restored_messages_come_before_newer_ones() -> None:
    inbox = Inbox()
    for n in (1, 2):
        inbox.put("pi-a", ack(n))
    taken = inbox.take("pi-a")
    inbox.put("pi-a", ack(3))  # arrived while the failed reconcile ran
    inbox.put("pi-a", ack(4))
    inbox.restore("pi-a", taken)
    assert generations(inbox.take("pi-a")) == [1, 2, 3, 4]
    assert inbox.dropped == 0


def test_restore_into_an_empty_backlog_gives_back_the_same_messages() -> None:
    inbox = Inbox()
    messages = [ack(1), ack(2)]
    for message in messages:
        inbox.put("pi-a", message)
    taken = inbox.take("pi-a")
    inbox.restore("pi-a", taken)
    assert inbox.take("pi-a") == messages
    assert len(inbox) == 0


def test_restoring_nothing_changes_nothing() -> None:
    inbox = Inbox()
    inbox.put("pi-a", ack(1))
    inbox.restore("pi-a", [])
    inbox.restore("pi-b", [])
    assert len(inbox) == 1
    assert inbox.take("pi-b") == []
    assert generations(inbox.take("pi-a")) == [1]


def test_restore_keeps_the_backlog_bound_and_drops_the_oldest() -> None:
    inbox = Inbox(backlog=3)
    for n in (1, 2, 3):
        inbox.put("pi-a", ack(n))
    taken = inbox.take("pi-a")
    inbox.put("pi-a", ack(4))
    inbox.put("pi-a", ack(5))
    inbox.restore("pi-a", taken)
    # Five messages for a backlog of three: the two oldest give way.
    assert len(inbox) == 3
    assert inbox.dropped == 2
    assert generations(inbox.take("pi-a")) == [3, 4, 5]


def test_the_bound_still_holds_for_puts_after_a_restore() -> None:
    inbox = Inbox(backlog=2)
    inbox.put("pi-a", ack(1))
    inbox.restore("pi-a", inbox.take("pi-a"))
    for n in (2, 3, 4):
        inbox.put("pi-a", ack(n))
    assert len(inbox) == 2
    assert inbox.dropped == 2
    assert generations(inbox.take("pi-a")) == [3, 4]


def test_restore_touches_only_its_own_device() -> None:
    inbox = Inbox(backlog=2)
    inbox.put("pi-b", ack(7, "pi-b"))
    inbox.put("pi-a", ack(1))
    inbox.restore("pi-a", inbox.take("pi-a"))
    assert generations(inbox.take("pi-b")) == [7]
    assert generations(inbox.take("pi-a")) == [1]


def test_concurrent_puts_during_restores_lose_nothing_within_the_bound() -> None:
    inbox = Inbox(backlog=1000)
    stop = threading.Event()
    put: list[int] = []

    def producer() -> None:
        n = 0
        while not stop.is_set() and n < 300:
            n += 1
            inbox.put("pi-a", ack(n))
            put.append(n)

    thread = threading.Thread(target=producer)
    thread.start()
    for _ in range(200):
        inbox.restore("pi-a", inbox.take("pi-a"))
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    # Every message put is there once, in the order it was put.
    assert generations(inbox.take("pi-a")) == put
    assert inbox.dropped == 0

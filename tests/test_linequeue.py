import threading

import pytest

from matchkit.util.linequeue import LineQueue


def _gated(log: list, gate: threading.Event):
    def work(item):
        gate.wait(5)
        if item == "bad":
            raise RuntimeError("bad item")
        log.append(item)
    return work


def test_items_run_in_order_put_on_one_worker():
    log, gate = [], threading.Event()
    q = LineQueue(_gated(log, gate), workers=1)
    for n in range(5):
        q.put(n, n)
    gate.set()
    q.take(range(5))
    assert log == [0, 1, 2, 3, 4]
    q.close()


def _one_held(n: int):
    """A one-worker queue of items 0..n-1, its worker holding item 0 until
    the gate opens; and the log of the items done, and the gate."""
    log, gate, started = [], threading.Event(), threading.Event()

    def work(item):
        started.set()
        gate.wait(5)
        log.append(item)

    q = LineQueue(work, workers=1)
    for k in range(n):
        q.put(k, k)
    assert started.wait(5)
    return q, log, gate


def test_taken_items_jump_the_line():
    q, log, gate = _one_held(6)
    waiter = threading.Thread(target=q.take, args=([4, 5],))
    waiter.start()
    while 4 in q and q._order[0] != 4:  # (take has moved them ahead)
        pass
    gate.set()
    waiter.join(5)
    assert log[:3] == [0, 4, 5]
    q.take([1, 2, 3])
    assert sorted(log) == list(range(6)) and len(log) == 6  # (each once)
    q.close()


def test_error_goes_to_whoever_takes_it_and_others_complete():
    log, gate = [], threading.Event()
    gate.set()
    q = LineQueue(_gated(log, gate), workers=2)
    q.put("a", "a")
    q.put("b", "bad")
    q.put("c", "c")
    with pytest.raises(RuntimeError, match="bad item"):
        q.take(["a", "b", "c"])
    assert sorted(log) == ["a", "c"]
    assert "b" not in q  # (taken, error and all)
    q.close()


def test_close_drops_what_was_not_started():
    q, log, gate = _one_held(4)
    gate.set()
    q.close()
    assert log in ([0], [0, 1])  # (the running one ends; the rest are dropped)
    with pytest.raises(RuntimeError):
        q.put(9, 9)


def test_keys_are_unique_and_known():
    q = LineQueue(lambda item: None, workers=1)
    q.put(1, 1)
    with pytest.raises(ValueError):
        q.put(1, 1)
    with pytest.raises(KeyError):
        q.take([2])
    q.take([1])
    q.close()


def test_close_while_taking_ends_the_wait():
    """An item dropped by ``close`` never comes: ``take`` says so instead of waiting forever."""
    q, log, gate = _one_held(3)
    errors = []

    def taker():
        try:
            q.take([2])
        except KeyError as e:
            errors.append(e)

    waiter = threading.Thread(target=taker, daemon=True)  # (a hang fails the test, not the run)
    waiter.start()
    while q._order[0] != 2:  # (take has moved it ahead)
        pass
    closer = threading.Thread(target=q.close)
    closer.start()
    while not q._closed:
        pass
    gate.set()
    closer.join(5)
    waiter.join(5)
    assert not waiter.is_alive() and len(errors) == 1

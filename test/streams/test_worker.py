"""Tests of cldyn_ros.streams.worker.LatestPairWorker."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from cldyn_ros.streams.worker import LatestPairWorker


class Recorder:
    """A ``process`` callable that records its items, optionally slowly or failing."""

    def __init__(self, delay: float = 0.0, fail_on=lambda item: False):
        self.delay = delay
        self.fail_on = fail_on
        self.items: list = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, item) -> None:
        self.started.set()
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.items.append(item)
        if self.fail_on(item):
            raise RuntimeError(f"failed on {item!r}")


def worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


@pytest.fixture
def make_worker():
    """Make workers and make sure every one of them is stopped after the test."""
    workers: list[LatestPairWorker] = []

    def make(*args, **kwargs) -> LatestPairWorker:
        worker = LatestPairWorker(*args, **kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop(timeout=2.0)


def test_processes_submitted_items(make_worker):
    rec = Recorder()
    worker = make_worker(rec, name="test-basic")
    worker.start()
    for i in range(5):
        assert worker.submit(i) is True
        assert worker.wait_idle(2.0)
    assert rec.items == [0, 1, 2, 3, 4]
    assert (worker.submitted, worker.processed, worker.dropped, worker.errors) == (5, 5, 0, 0)
    assert not worker.busy


def test_overload_drops_waiting_items_and_processes_the_latest(make_worker):
    rec = Recorder(delay=0.005)
    worker = make_worker(rec, name="test-overload")
    worker.start()
    results = [worker.submit(i) for i in range(100)]  # far faster than 5 ms each
    assert worker.wait_idle(5.0)
    assert worker.processed + worker.dropped == worker.submitted == 100
    assert worker.dropped > 0
    assert results.count(False) == worker.dropped
    assert rec.items[-1] == 99  # the newest item is never dropped
    assert rec.items == sorted(rec.items)
    assert len(rec.items) == worker.processed


def blocker(release: threading.Event, started: threading.Event):
    """A ``process`` that signals ``started`` and then blocks until ``release``."""
    def process(item) -> None:
        started.set()
        release.wait(5.0)
    return process


def test_submit_never_blocks_while_processing(make_worker):
    release, started = threading.Event(), threading.Event()
    worker = make_worker(blocker(release, started), name="test-nonblocking")
    worker.start()
    worker.submit("slow")
    assert started.wait(2.0)
    t0 = time.monotonic()
    for i in range(20):
        worker.submit(i)
    assert time.monotonic() - t0 < 0.5
    assert worker.busy
    release.set()
    assert worker.wait_idle(2.0)
    assert worker.processed == 2 and worker.dropped == 19


def test_exceptions_are_counted_and_passed_to_on_error(make_worker):
    rec = Recorder(fail_on=lambda item: item % 2 == 1)
    errors: list[tuple[int, BaseException]] = []
    worker = make_worker(rec, name="test-errors",
                         on_error=lambda item, exc: errors.append((item, exc)))
    worker.start()
    for i in range(6):
        worker.submit(i)
        assert worker.wait_idle(2.0)
    assert rec.items == list(range(6))  # kept running after each failure
    assert worker.errors == 3 and worker.processed == 6
    assert [item for item, _ in errors] == [1, 3, 5]
    assert all(isinstance(exc, RuntimeError) for _, exc in errors)
    assert len(worker_threads("test-errors")) == 1


def test_exception_without_handler_is_logged(make_worker, caplog):
    worker = make_worker(Recorder(fail_on=lambda item: True), name="test-log")
    worker.start()
    with caplog.at_level(logging.ERROR, logger="cldyn_ros.streams.worker"):
        worker.submit("x")
        assert worker.wait_idle(2.0)
    assert worker.errors == 1
    assert "processing failed" in caplog.text and "failed on 'x'" in caplog.text


def test_failing_error_handler_does_not_kill_the_thread(make_worker, caplog):
    def bad_handler(item, exc):
        raise ValueError("handler broke")

    rec = Recorder(fail_on=lambda item: item == 0)
    worker = make_worker(rec, name="test-bad-handler", on_error=bad_handler)
    worker.start()
    with caplog.at_level(logging.ERROR, logger="cldyn_ros.streams.worker"):
        worker.submit(0)
        assert worker.wait_idle(2.0)
    worker.submit(1)
    assert worker.wait_idle(2.0)
    assert rec.items == [0, 1] and worker.errors == 1
    assert "on_error handler failed" in caplog.text


def test_stop_finishes_current_item_drops_waiting_one_and_joins():
    rec = Recorder(delay=0.1)
    worker = LatestPairWorker(rec, name="test-stop")
    worker.start()
    assert len(worker_threads("test-stop")) == 1
    worker.submit("running")
    assert rec.started.wait(2.0)
    worker.submit("waiting")
    worker.stop(timeout=2.0)
    assert rec.items == ["running"]
    assert worker.processed == 1 and worker.dropped == 1
    assert worker_threads("test-stop") == []
    worker.stop()  # idempotent
    assert worker.submit("late") is False  # dropped: the worker is stopped
    assert worker.dropped == 2 and worker.submitted == 3
    with pytest.raises(RuntimeError):
        worker.start()


def test_stop_without_start_and_start_twice():
    worker = LatestPairWorker(Recorder(), name="test-never-started")
    worker.submit(1)
    assert worker.busy and not worker.wait_idle(0.01)
    worker.stop()
    assert worker.dropped == 1 and not worker.busy

    worker = LatestPairWorker(Recorder(), name="test-twice")
    worker.start()
    try:
        with pytest.raises(RuntimeError):
            worker.start()
    finally:
        worker.stop()
    assert worker_threads("test-twice") == []


def test_item_submitted_before_start_is_processed(make_worker):
    rec = Recorder()
    worker = make_worker(rec, name="test-early")
    worker.submit(None)  # None is a valid item
    worker.start()
    assert worker.wait_idle(2.0)
    assert rec.items == [None] and worker.processed == 1


def test_blocking_mode_processes_every_item(make_worker):
    rec = Recorder(delay=0.001)
    worker = make_worker(rec, name="test-blocking", drop_stale=False)
    assert worker.drop_stale is False
    worker.start()
    results = [worker.submit(i) for i in range(50)]
    assert worker.wait_idle(5.0)
    assert all(results)
    assert rec.items == list(range(50))
    assert worker.dropped == 0 and worker.processed == 50


def test_blocking_submit_waits_for_the_slot(make_worker):
    release, started = threading.Event(), threading.Event()
    worker = make_worker(blocker(release, started), name="test-backpressure", drop_stale=False)
    worker.start()
    worker.submit(0)
    assert started.wait(2.0)  # taken by the thread, which blocks in process
    worker.submit(1)  # waits in the slot
    third_done = threading.Event()
    threading.Thread(target=lambda: (worker.submit(2), third_done.set()), daemon=True).start()
    assert not third_done.wait(0.1)  # blocked: the slot is occupied
    release.set()
    assert third_done.wait(2.0)
    assert worker.wait_idle(2.0)
    assert worker.processed == 3 and worker.dropped == 0


def test_blocking_submit_is_released_by_stop():
    release, started = threading.Event(), threading.Event()
    worker = LatestPairWorker(blocker(release, started), name="test-release", drop_stale=False)
    worker.start()
    worker.submit(0)
    assert started.wait(2.0)
    worker.submit(1)
    outcome: list[bool] = []
    blocked = threading.Thread(target=lambda: outcome.append(worker.submit(2)), daemon=True)
    blocked.start()
    time.sleep(0.05)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    blocked.join(2.0)
    assert outcome == [False]  # woken up by stop, item dropped
    release.set()
    stopper.join(2.0)
    assert not stopper.is_alive()
    assert worker.processed == 1 and worker.dropped == 2
    assert worker_threads("test-release") == []


def test_blocking_submit_from_the_worker_thread_is_an_error(make_worker):
    errors: list[BaseException] = []
    holder: list[LatestPairWorker] = []

    def process(item):
        if item == "outer":
            holder[0].submit("inner")

    worker = make_worker(process, name="test-reentrant", drop_stale=False,
                         on_error=lambda item, exc: errors.append(exc))
    holder.append(worker)
    worker.start()
    worker.submit("outer")
    assert worker.wait_idle(2.0)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_requires_callable_and_has_repr():
    with pytest.raises(TypeError):
        LatestPairWorker("not callable")  # type: ignore[arg-type]
    worker = LatestPairWorker(print, name="test-repr")
    assert "test-repr" in repr(worker) and "drop_stale=True" in repr(worker)

"""The Batcher alone: a real event loop and a real worker thread, a trivial batch function, and events that say
when it may return, so that what lands in which batch does not depend on how busy the machine is."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from jmvae.service.batching import Batcher, BatchStats, DeadlineExceeded, QueueFull

WAIT_S = 10.0  # how long anything may take before the test fails instead of hanging; never waited out on success


class Model:
    """A batch function that records each batch, answers value × 10, raises for "poison", and, while `held`, stops
    in its first call until released."""

    def __init__(self, held: bool = False) -> None:
        self.batches: list[list[object]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()

    def __call__(self, values: Sequence[object]) -> list[object]:
        self.batches.append(list(values))
        self.entered.set()
        assert self.release.wait(WAIT_S), "the test never released the batch function"
        if "poison" in values:
            raise ValueError(f"cannot run {list(values)}")
        return [value * 10 for value in values]

    async def until_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, WAIT_S), "the batch function was never called"


def run(test: Callable[[Callable[..., Batcher]], Awaitable[None]]) -> None:
    """Runs `test` on a fresh event loop with a factory of started batchers on one worker thread (as the engine
    runs them); stops them and the thread afterwards."""

    async def main() -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-model")
        batchers: list[Batcher] = []

        def batcher(
            model: Model,
            max_batch_size: int = 4,
            max_wait_s: float = 0.05,
            max_queue: int = 100,
            on_batch: Callable[[str, BatchStats], None] | None = None,
            upstream_wait_s: float = 0.0,
            upstream_busy: int = 1,
        ) -> Batcher:
            b = Batcher(
                "test",
                model,
                executor,
                max_batch_size,
                max_wait_s,
                max_queue,
                on_batch,
                upstream_wait_s=upstream_wait_s,
                upstream_busy=upstream_busy,
            )
            b.start()
            batchers.append(b)
            return b

        try:
            await asyncio.wait_for(test(batcher), 3 * WAIT_S)
        finally:
            for b in batchers:
                await b.stop()
            executor.shutdown(wait=True)

    asyncio.run(main())


def submit(batcher: Batcher, *values: object) -> list[asyncio.Task]:
    return [asyncio.create_task(batcher.submit(value)) for value in values]


async def queued(batcher: Batcher, depth: int) -> None:
    """Lets the submitting tasks run until `depth` items wait in the batcher's queue."""
    deadline = time.monotonic() + WAIT_S
    while batcher.depth < depth:
        assert time.monotonic() < deadline, f"{batcher.depth} items queued, expected {depth}"
        await asyncio.sleep(0)


def test_a_backlog_is_cut_into_batches_of_at_most_max_size_and_each_submitter_gets_its_own_result() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model, sizes = Model(held=True), []
        b = batcher(model, max_batch_size=4, on_batch=lambda name, stats: sizes.append((name, stats.size)))
        first = submit(b, 0)
        await model.until_entered()  # 0 runs alone and holds the worker; 1..9 wait behind it
        rest = submit(b, *range(1, 10))
        await queued(b, 9)
        model.release.set()
        assert await asyncio.gather(*first, *rest) == [v * 10 for v in range(10)]
        assert model.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
        assert sizes == [("test", 1), ("test", 4), ("test", 4), ("test", 1)]

    run(test)


def test_each_submitter_gets_the_output_at_its_own_inputs_position() -> None:
    """Outputs are matched to inputs by position: values submitted out of order come back to their own submitters."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=8)
        first = submit(b, 100)
        await model.until_entered()
        tasks = {value: submit(b, value)[0] for value in (5, 3, 9, 1)}
        await queued(b, 4)
        model.release.set()
        await asyncio.gather(*first, *tasks.values())
        assert {value: task.result() for value, task in tasks.items()} == {5: 50, 3: 30, 9: 90, 1: 10}
        assert model.batches[1] == [5, 3, 9, 1]  # in the order they were submitted

    run(test)


def test_a_batch_waits_for_more_items_until_it_is_full() -> None:
    """With a long max_wait, items that arrive after the first join its batch, which runs as soon as it is full."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model()
        b = batcher(model, max_batch_size=3, max_wait_s=3 * WAIT_S)
        tasks = submit(b, 1)
        await asyncio.sleep(0.05)
        assert model.batches == []  # still waiting for the batch to fill
        tasks += submit(b, 2)
        await asyncio.sleep(0.05)
        tasks += submit(b, 3)
        # Full at 3: runs now, not after max_wait (which would outlast wait_for and fail the test).
        assert await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S) == [10, 20, 30]
        assert model.batches == [[1, 2, 3]]

    run(test)


def test_a_lone_item_runs_after_max_wait_without_a_full_batch() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model, stats = Model(), []
        b = batcher(model, max_batch_size=8, max_wait_s=0.2, on_batch=lambda name, s: stats.append(s))
        started = time.perf_counter()
        assert await asyncio.wait_for(b.submit(7), WAIT_S) == 70
        assert model.batches == [[7]]
        # It waited for company (at least max_wait, however busy the machine) before running alone.
        assert time.perf_counter() - started >= 0.15
        (only,) = stats
        assert only.size == 1 and len(only.queue_wait_s) == 1 and only.queue_wait_s[0] >= 0.15
        assert only.model_s >= 0

    run(test)


def test_a_batch_waits_for_items_on_their_way_while_enough_are() -> None:
    """No max_wait, but two items being prepared (upstream): the first queued item waits for them; once fewer than
    upstream_busy are on their way, the batch goes with what has come."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model()
        b = batcher(model, max_batch_size=8, max_wait_s=0.0, upstream_wait_s=3 * WAIT_S, upstream_busy=2)
        with ExitStack() as preparing:
            second = preparing.enter_context(ExitStack())
            second.enter_context(b.upstream())
            preparing.enter_context(b.upstream())
            tasks = submit(b, 1)
            await asyncio.sleep(0.05)
            assert model.batches == []  # two on their way: it waits
            second.close()  # one is ready, and is submitted with no await in between
            tasks += submit(b, 2)
            assert await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S) == [10, 20]
        assert model.batches == [[1, 2]]  # one still on its way is fewer than upstream_busy: it did not wait

    run(test)


def test_a_failed_preparation_lets_the_batch_go_and_upstream_wait_bounds_the_wait() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model()
        b = batcher(model, max_batch_size=8, max_wait_s=0.0, upstream_wait_s=3 * WAIT_S)
        with pytest.raises(ValueError), b.upstream():
            task = submit(b, 1)
            await asyncio.sleep(0.05)
            assert model.batches == []
            raise ValueError("not an image")  # never submitted
        assert await asyncio.wait_for(task[0], WAIT_S) == 10

        bounded = batcher(Model(), max_batch_size=8, max_wait_s=0.0, upstream_wait_s=0.2)
        with bounded.upstream():  # never comes
            started = time.perf_counter()
            assert await asyncio.wait_for(bounded.submit(2), WAIT_S) == 20
            assert time.perf_counter() - started >= 0.15

    run(test)


def test_a_full_queue_refuses_at_max_queue_and_accepts_again_once_it_drains() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=1, max_queue=2)
        running = submit(b, 0)
        await model.until_entered()  # taken off the queue: it does not count against max_queue
        waiting = submit(b, 1, 2)
        await queued(b, 2)
        with pytest.raises(QueueFull, match="2 requests already waiting for the test model path") as refused:
            await b.submit(3)
        assert refused.value.path == "test" and b.depth == 2
        model.release.set()
        assert await asyncio.gather(*running, *waiting) == [0, 10, 20]
        assert await b.submit(4) == 40
        assert [v for batch in model.batches for v in batch] == [0, 1, 2, 4]  # 3 never reached the model

    run(test)


def test_a_batch_that_raises_fails_every_submitter_and_later_batches_are_served() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model, sizes = Model(held=True), []
        b = batcher(model, max_batch_size=3, on_batch=lambda name, stats: sizes.append(stats.size))
        first = submit(b, 0)
        await model.until_entered()
        poisoned = submit(b, "poison", "poison", "poison")
        await queued(b, 3)
        model.release.set()
        assert await asyncio.gather(*first) == [0]
        results = await asyncio.gather(*poisoned, return_exceptions=True)
        assert all(isinstance(r, ValueError) and "cannot run" in str(r) for r in results), results
        assert await asyncio.gather(*submit(b, 1, 2)) == [10, 20]  # the batcher keeps serving
        assert sizes[0] == 1 and sizes[-1] == 2

    run(test)


def test_one_item_that_makes_the_batch_raise_fails_alone() -> None:
    """A failed batch is run again item by item, so that only the submitter whose input raises gets the error."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=3)
        first = submit(b, 0)
        await model.until_entered()
        tasks = submit(b, 1, "poison", 3)
        await queued(b, 3)
        model.release.set()
        results = await asyncio.gather(*first, *tasks, return_exceptions=True)
        assert results[0] == 0 and results[1] == 10 and results[3] == 30, results
        assert isinstance(results[2], ValueError)
        assert model.batches == [[0], [1, "poison", 3], [1], ["poison"], [3]]

    run(test)


def test_a_submitter_that_went_away_is_left_out_of_the_batch() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=4)
        first = submit(b, 0)
        await model.until_entered()
        a, gone, c = submit(b, 1, 2, 3)
        await queued(b, 3)
        gone.cancel()
        model.release.set()
        assert await asyncio.gather(*first, a, c) == [0, 10, 30]
        assert gone.cancelled()
        assert model.batches == [[0], [1, 3]]

    run(test)


def test_stop_fails_what_is_still_queued_and_lets_the_running_batch_answer() -> None:
    """Stopping (the service shutting down) answers every item still in the queue with QueueFull at once, and the
    batch already on the model thread finishes and answers its submitters (stop() used to leave them waiting)."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=1)
        running = submit(b, 0)
        await model.until_entered()
        waiting = submit(b, 1, 2)
        await queued(b, 2)
        stopping = asyncio.create_task(b.stop())
        # Answered while the batch is still held: stop() does not make the queue wait for the model.
        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), WAIT_S)
        assert all(isinstance(r, QueueFull) and "shutting down" in str(r) and r.path == "test" for r in results)
        assert b.depth == 0 and not stopping.done() and not running[0].done()
        model.release.set()
        assert await asyncio.wait_for(running[0], WAIT_S) == 0
        await asyncio.wait_for(stopping, WAIT_S)
        assert model.batches == [[0]]  # the queued items never reached the model

    run(test)


def test_submit_after_stop_is_refused_at_once() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model()
        b = batcher(model)
        await b.stop()
        with pytest.raises(QueueFull, match="shutting down") as refused:
            await asyncio.wait_for(b.submit(1), WAIT_S)  # used to wait for ever
        assert refused.value.path == "test" and b.depth == 0 and model.batches == []

    run(test)


def test_stop_of_an_idle_batcher_returns_and_can_be_repeated() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        b = batcher(Model())
        assert await b.submit(1) == 10
        await asyncio.wait_for(b.stop(), WAIT_S)
        await asyncio.wait_for(b.stop(), WAIT_S)

    run(test)


# Deadlines --------------------------------------------------------------------------------------------------
def late(batcher: Batcher, seconds: float, *values: object) -> list[asyncio.Task]:
    """Submitters whose batch must start within `seconds` from now."""
    deadline = time.monotonic() + seconds
    return [asyncio.create_task(batcher.submit(value, deadline)) for value in values]


def test_items_whose_deadline_passes_in_the_queue_are_answered_at_once_and_never_run() -> None:
    """Behind a batch that holds the model, items with a short deadline get DeadlineExceeded as it passes, not when
    the model is free; they never reach the batch function, leave the queue, and the batcher serves on."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=4)
        first = submit(b, 0)
        await model.until_entered()
        expiring, patient = late(b, 0.2, 1, 2), late(b, 3 * WAIT_S, 3)
        await queued(b, 3)
        results = await asyncio.wait_for(asyncio.gather(*expiring, return_exceptions=True), WAIT_S)
        assert all(isinstance(r, DeadlineExceeded) and r.path == "test" for r in results), results
        assert b.depth == 1 and not first[0].done()  # answered while the model is still held
        model.release.set()
        assert await asyncio.gather(*first, *patient) == [0, 30]
        assert model.batches == [[0], [3]]

    run(test)


def test_expired_items_are_dropped_when_the_batch_forms_and_do_not_take_a_place_in_it() -> None:
    """Items already late when their batch forms (the event loop was blocked past their deadline) are failed
    there, and the batch is filled with live items instead."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=2)
        first = submit(b, 0)
        await model.until_entered()
        expiring, live = late(b, 0.05, 1, 2), submit(b, 3, 4)
        await queued(b, 4)
        time.sleep(0.1)  # blocks the loop: the deadlines pass before any timer can fire
        model.release.set()
        assert await asyncio.gather(*first, *live) == [0, 30, 40]
        results = await asyncio.gather(*expiring, return_exceptions=True)
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        assert model.batches == [[0], [3, 4]]

    run(test)


def test_a_deadline_already_passed_is_refused_without_queueing() -> None:
    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model()
        b = batcher(model)
        with pytest.raises(DeadlineExceeded):
            await b.submit(1, time.monotonic() - 1)
        assert b.depth == 0 and model.batches == []

    run(test)


def test_an_item_whose_batch_started_before_its_deadline_gets_the_batch_answer() -> None:
    """The deadline bounds the wait in the queue: a batch that outlasts it still answers its submitters."""

    async def test(batcher: Callable[..., Batcher]) -> None:
        model = Model(held=True)
        b = batcher(model, max_batch_size=4)
        (task,) = late(b, 0.2, 5)
        await model.until_entered()
        await asyncio.sleep(0.4)  # past the deadline, inside the running batch
        assert not task.done()
        model.release.set()
        assert await asyncio.wait_for(task, WAIT_S) == 50

    run(test)

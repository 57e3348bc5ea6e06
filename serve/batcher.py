"""Dynamic batching across concurrent requests, by a token budget (as TEI's router does).

Each model has a lane: a FIFO of pending works (one per request and model: its token
sequences). The lane's worker takes rows from the head of the queue, across requests, until the
padded tokens reach ``batch_tokens``, runs the batch's forward passes in threads (``workers`` at
once), and gives every request exactly its own rows back once all of them are done (a large
request spans several batches).

Every row is padded to a width that depends on its own length only (:func:`bucket`: the next
multiple of a quarter of its power of two, at least 8, so at most 25% or 7 tokens of padding),
and a forward pass only holds rows of one width. ONNX Runtime computes each row of a pass
independently of the other rows and of their number, so a row's values depend on its tokens
alone: a request gets the same bits whether it ran alone or merged with 63 others
(tests/test_serve_batching.py).

Admission is bounded: past ``max_queue`` inputs waiting or running (all lanes together),
``submit_many`` raises :class:`OverloadedError` (the server answers 503) before queueing any.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embedrank.errors import OverloadedError

DEFAULT_BATCH_TOKENS = 16384  # padded tokens per forward pass (TEI's max_batch_tokens default)
DEFAULT_MAX_QUEUE = 4096  # inputs waiting or running, all models together
DEFAULT_WORKERS = 2  # forward passes of one model running at once


def bucket(length: int, limit: int | None = None) -> int:
    """The padded width of a row of ``length`` tokens: 8, 16, 24, 32, 40, 48, 56, 64, 80, ..."""
    step = max(8, 1 << max(0, length.bit_length() - 3))
    width = -(-length // step) * step
    return max(length, min(width, limit)) if limit else width


@dataclass(frozen=True)
class Lane:
    """A model as the batcher sees it: ``forward(rows, width)`` runs one padded pass."""

    name: str
    forward: Callable[[list[Sequence[int]], int], np.ndarray]
    max_rows: int
    max_length: int | None = None


@dataclass
class _Work:
    seqs: list[Sequence[int]]
    widths: list[int]
    future: asyncio.Future
    out: list = field(default_factory=list)
    taken: int = 0  # rows handed to a batch
    done: int = 0  # rows computed
    queued_at: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.out = [None] * len(self.seqs)


class _Queue:
    def __init__(self, lane: Lane, batcher: Batcher) -> None:
        self.lane, self.batcher = lane, batcher
        self.pending: deque[_Work] = deque()
        self.ready = asyncio.Condition()
        self.tasks: list[asyncio.Task] = []

    async def put(self, work: _Work) -> None:
        async with self.ready:
            self.pending.append(work)
            self.ready.notify()

    async def take(self) -> list[tuple[_Work, int, int]]:
        """Slices (work, start, end) of the oldest rows, up to the token budget (at least one row)."""
        async with self.ready:
            while True:
                taken = self._slices(self.batcher.batch_tokens)
                if taken:
                    return taken
                await self.ready.wait()

    def _slices(self, budget: int) -> list[tuple[_Work, int, int]]:
        taken, tokens = [], 0
        while self.pending:
            work = self.pending[0]
            if work.future.done():  # failed or abandoned: drop what is left of it
                self.pending.popleft()
                self.batcher.release(self.lane.name, len(work.seqs) - work.taken)
                continue
            start = work.taken
            while work.taken < len(work.seqs) and (
                    not tokens or tokens + work.widths[work.taken] <= budget):
                tokens += work.widths[work.taken]
                work.taken += 1
            taken.append((work, start, work.taken))
            if work.taken < len(work.seqs):
                break  # budget full
            self.pending.popleft()
        return taken

    async def worker(self) -> None:
        running = asyncio.Semaphore(self.batcher.workers)  # forward passes at once
        while True:
            taken = await self.take()
            try:
                await self._run(running, taken)
            finally:
                self.batcher.release(self.lane.name, sum(end - start for _, start, end in taken))

    async def _run(self, running: asyncio.Semaphore, taken: list[tuple[_Work, int, int]]) -> None:
        metrics, start = self.batcher.metrics, time.perf_counter()
        for work, first, _ in taken:
            if first == 0:
                metrics.queue_seconds.observe(self.lane.name, value=start - work.queued_at)
        try:
            await asyncio.gather(*(self._pass(running, width, rows)
                                   for width, rows in self._passes(taken)))
        except Exception as exc:  # the runtime failed: every request of the batch gets it
            for work, _, _ in taken:
                if not work.future.done():
                    work.future.set_exception(exc)
            return
        rows = sum(end - first for _, first, end in taken)
        metrics.batch_seconds.observe(self.lane.name, value=time.perf_counter() - start)
        metrics.batch_inputs.observe(self.lane.name, value=rows)
        metrics.batch_requests.observe(self.lane.name, value=len(taken))
        metrics.batch_tokens.observe(self.lane.name, value=sum(
            sum(w.widths[first:end]) for w, first, end in taken))
        for work, first, end in taken:
            work.done += end - first
            if work.done == len(work.seqs) and not work.future.done():
                work.future.set_result(np.stack(work.out))

    def _passes(self, taken: list[tuple[_Work, int, int]]) -> list[tuple[int, list[tuple[_Work, int]]]]:
        """The forward passes of a batch: rows grouped by width, chunked by the token budget."""
        by_width: dict[int, list[tuple[_Work, int]]] = {}
        for work, first, end in taken:
            for i in range(first, end):
                by_width.setdefault(work.widths[i], []).append((work, i))
        passes = []
        for width, rows in by_width.items():
            cap = max(1, min(self.lane.max_rows, self.batcher.batch_tokens // width))
            passes += [(width, rows[k: k + cap]) for k in range(0, len(rows), cap)]
        return passes

    async def _pass(self, running: asyncio.Semaphore, width: int, rows: list[tuple[_Work, int]]) -> None:
        """One forward pass in a worker thread; its rows into their works."""
        async with running:
            out = await asyncio.get_running_loop().run_in_executor(
                self.batcher.executor, self.lane.forward, [w.seqs[i] for w, i in rows], width)
        for (work, i), row in zip(rows, out, strict=True):
            work.out[i] = row


class Batcher:
    """Queues by lane name; ``submit_many`` resolves to each work's rows, in order."""

    def __init__(self, lanes: Sequence[Lane], metrics, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 max_queue: int = DEFAULT_MAX_QUEUE, workers: int = DEFAULT_WORKERS) -> None:
        self.lanes = {lane.name: lane for lane in lanes}
        self.metrics = metrics
        self.batch_tokens, self.max_queue, self.workers = batch_tokens, max_queue, workers
        self.queued = 0
        self.depth = dict.fromkeys(self.lanes, 0)
        self.queues: dict[str, _Queue] = {}
        self.executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max(1, self.workers * len(self.lanes)),
                                           thread_name_prefix="embedrank-model")
        for name, lane in self.lanes.items():
            queue = self.queues[name] = _Queue(lane, self)
            queue.tasks = [asyncio.create_task(queue.worker(), name=f"embedrank-{name}")]

    async def stop(self) -> None:
        tasks = [t for q in self.queues.values() for t in q.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.queues.clear()

    def admit(self, count: int) -> None:
        """Reserve ``count`` queue places, or raise :class:`OverloadedError` reserving none."""
        if self.queued + count > self.max_queue:
            self.metrics.rejected.inc()
            raise OverloadedError(
                f"the server has {self.queued} inputs waiting or running and this request adds "
                f"{count}, over --max-queue {self.max_queue}: retry later, or start the server with "
                "a larger --max-queue or --batch-tokens")
        self.queued += count

    @contextlib.contextmanager
    def reserved(self, count: int) -> Iterator[None]:
        """Hold ``count`` queue places for work run outside the lanes (the proxy's reranking)."""
        self.admit(count)
        try:
            yield
        finally:
            self.queued -= count

    async def submit_many(self, items: Sequence[tuple[str, list[Sequence[int]]]]) -> list[np.ndarray]:
        """Queue every (lane, rows) item at once (all admitted or none); their outputs, in order."""
        self.admit(sum(len(seqs) for _, seqs in items))
        loop = asyncio.get_running_loop()
        works: list[_Work] = []
        try:
            for name, seqs in items:
                lane = self.lanes[name]
                work = _Work(list(seqs), [bucket(len(s), lane.max_length) for s in seqs],
                             loop.create_future())
                works.append(work)
                self._track(name, len(seqs))
                if not seqs:
                    work.future.set_result(np.zeros((0,), dtype=np.float32))
                    continue
                await self.queues[name].put(work)
            return list(await asyncio.gather(*(w.future for w in works)))
        finally:
            for work in works:
                work.future.cancel()  # no-op when done; a dropped request frees its places

    def _track(self, name: str, count: int) -> None:
        self.depth[name] += count
        self.metrics.queue_depth.set(name, value=self.depth[name])

    def release(self, name: str, count: int) -> None:
        self.queued -= count
        self._track(name, -count)

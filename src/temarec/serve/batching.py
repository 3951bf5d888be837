"""Dynamic micro-batching: requests that arrive close together are scored in one forward pass per domain.

The HTTP handlers never run the model themselves: they hand their queries to a :class:`MicroBatcher` and await
the answers, so the event loop stays free for other requests (``/health`` and ``/metadata`` answer at once while
a batch is being scored). The batcher's loop:

1. waits for a first query;
2. waits ``window_ms`` more (a millisecond or two) for others to arrive, unless the queue already holds
   ``max_rows`` of them;
3. scores everything queued (at most ``max_rows`` rows) with ``Recommender.answer`` on one worker thread: one
   forward pass per domain whatever each request's k and flags;
4. hands each request its own answer or its own error, and goes back to 1 without waiting when more queries
   arrived in the meantime (they have waited for a whole batch already).

One worker thread, not a pool: torch's kernels are already parallel inside one process (``--threads``), and
serial batches keep concurrent requests from competing for the same cores. Answers are those of scoring each
request alone (tests/serve/test_batching.py), up to float rounding of the batched matrix products.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from temarec.serve.recommender import Query, RecommendError, Recommendations, Recommender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """How long a batch waits for company, and how large it may grow."""

    window_ms: float = 2.0  # wait after the first query of an idle queue; 0 = score whatever is queued at once
    max_rows: int = 256  # queries scored in one call of Recommender.answer

    def __post_init__(self) -> None:
        if not 0 <= self.window_ms <= 1000:
            raise ValueError(f"batch window must be 0..1000 ms, got {self.window_ms}")
        if self.max_rows < 1:
            raise ValueError(f"batch max_rows must be >= 1, got {self.max_rows}")


@dataclass
class _Pending:
    queries: list[Query]
    future: asyncio.Future


class MicroBatcher:
    """Collects queries from concurrent requests and scores them together on one worker thread."""

    def __init__(self, recommender: Recommender, config: BatchingConfig | None = None):
        self.rec = recommender
        self.config = config or BatchingConfig()
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the runner lives on
        self._executor: ThreadPoolExecutor | None = None
        self.batch_sizes: list[int] = []  # queries per scored batch (the last 1,000), for tests and diagnostics
        self.batches, self.queries = 0, 0  # scored since start: the mean batch size is logged on close

    async def answer(self, queries: list[Query]) -> list[Recommendations | RecommendError]:
        """The answers of ``queries`` (in order), scored together with whatever else arrives in the window."""
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._loop is not loop:
            self._loop, self._pending, self._wakeup = loop, [], asyncio.Event()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="temarec-score")
            self._runner = loop.create_task(self._run())
        future = loop.create_future()
        self._pending.append(_Pending(queries, future))
        self._wakeup.set()  # type: ignore[union-attr]
        return await future

    async def _run(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            await wakeup.wait()
            if self.config.window_ms > 0 and self._rows() < self.config.max_rows:
                await asyncio.sleep(self.config.window_ms / 1000)
            while self._pending:
                batch = self._take()
                queries = [q for p in batch for q in p.queries]
                try:
                    answers = await asyncio.get_running_loop().run_in_executor(self._executor, self.rec.answer,
                                                                               queries)
                except Exception as exc:  # a bug, not a bad request: every request of the batch gets a 500
                    log.exception("scoring a batch of %d queries failed", len(queries))
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                self.batch_sizes = [*self.batch_sizes[-999:], len(queries)]
                self.batches, self.queries = self.batches + 1, self.queries + len(queries)
                start = 0
                for p in batch:
                    if not p.future.done():  # the client may have gone away
                        p.future.set_result(answers[start:start + len(p.queries)])
                    start += len(p.queries)
            wakeup.clear()

    def _rows(self) -> int:
        return sum(len(p.queries) for p in self._pending)

    def _take(self) -> list[_Pending]:
        """Whole requests from the front of the queue, up to max_rows queries (always at least one request)."""
        rows, n = 0, 0
        for p in self._pending:
            if n and rows + len(p.queries) > self.config.max_rows:
                break
            rows, n = rows + len(p.queries), n + 1
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def close(self) -> None:
        """Stop the loop and the worker thread (the next ``answer`` starts them again)."""
        if self.batches:
            log.info("scored %d queries in %d micro-batches (%.2f per batch)", self.queries, self.batches,
                     self.queries / self.batches)
        if self._runner is not None:
            self._runner.cancel()
            self._runner = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

"""Batching for the ``transformers`` engine, event-loop side: requests, choices, groups, the batcher.

* :class:`Request` / :class:`Choice`: a request waiting for, or running in, a
  batch, and each of its output sequences (a :class:`~.text_stream.TextStream`
  turns the sequence's tokens into text, and the choice queues its chunks).
* :func:`group_key`: requests with equal keys (the same decoding config; beam
  search also the same num_beams, n and max_tokens; a seeded request only with
  itself) can share one ``model.generate`` call.
* :class:`Batcher`: the event-loop task that takes the oldest waiting request,
  waits up to ``batch_wait_timeout_s`` for others (at most ``max_batch_size``
  requests), and runs the oldest request's group, one group at a time.

The worker-thread side, the ``generate`` call and its hooks, is
:mod:`.transformers_generate`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.errors import ServiceUnavailableError
from services.generation.config import TransformersModelConfig
from services.generation.protocol import FinishReason, GenerationChunk, SamplingParams, TokenLogprob
from services.generation.text_stream import TextStream

logger = logging.getLogger("llmops.generation")


@dataclass
class EngineStats:
    """Counters of the batcher, for metrics and tests."""

    generate_calls: int = 0  # model.generate calls (one per batch)
    requests: int = 0  # requests that entered a batch
    max_batch_requests: int = 0  # most requests in one generate call
    max_batch_rows: int = 0  # most sequences (requests x n) in one generate call
    decode_steps: int = 0  # streamed decoding steps, all batches together
    running: bool = False  # a generate call is in the worker thread now


class Choice:
    """One output sequence: worker-side retirement flag plus loop-side text and chunk state.

    The event loop feeds its tokens to :attr:`text_stream` and queues its chunks
    (:meth:`settle`, :meth:`close`, :meth:`emit`) on the request's queue.
    """

    def __init__(self, request: Request, index: int, decode: Callable[[list[int]], str]) -> None:
        self.request = request
        self.index = index
        # set by either thread, only ever False -> True: the worker stops producing this row
        self.stopped = False
        self.produced = 0  # worker thread only: tokens put for this row
        # event loop only, from here on
        self.finished = False
        self.first_sent = False
        self.generated = 0
        self.text_stream = TextStream(decode, request.prompt_ids, request.params.stop)
        self.pending_tokens = 0
        self.pending_logprobs: list[TokenLogprob] = []

    def settle(self, ending: FinishReason | None) -> None:
        """Decode new text, then close on a stop string or ``ending``, else emit what is safe."""
        text, hit_stop = self.text_stream.advance(flush=ending is not None)
        if hit_stop:
            self.close("stop", text)
        elif ending is not None:
            self.close(ending, text)
        elif text:
            self.emit(text, None)

    def close(self, reason: FinishReason, text: str) -> None:
        """Queue the choice's last chunk."""
        self.stopped = True  # tells the worker to retire the row
        self.finished = True
        self.emit(text, reason)

    def emit(self, text: str, reason: FinishReason | None) -> None:
        """Queue a chunk of ``text`` with the tokens and logprobs since the last one."""
        req = self.request
        chunk = GenerationChunk(
            index=self.index,
            text=text,
            num_tokens=self.pending_tokens,
            finish_reason=reason,
            logprobs=tuple(self.pending_logprobs) if req.params.logprobs is not None else None,
            prompt_tokens=None if self.first_sent else len(req.prompt_ids),
        )
        self.first_sent = True
        self.pending_tokens = 0
        self.pending_logprobs = []
        req.queue.put_nowait(chunk)


class Request:
    """A request waiting for, or running in, a batch.

    ``decode`` (token ids to text) is what its choices' text streams decode with.
    """

    def __init__(
        self,
        rid: str,
        params: SamplingParams,
        prompt_ids: list[int],
        max_new: int,
        decode: Callable[[list[int]], str],
    ) -> None:
        self.request_id = rid
        self.params = params
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self.cancelled = False  # read by the worker thread
        self.choices = [Choice(self, i, decode) for i in range(params.n)]
        self.key = group_key(self)

    def fail(self, exc: BaseException) -> None:
        """End the request with ``exc`` (raised to its reader), unless every choice has finished."""
        if not all(c.finished for c in self.choices):
            for c in self.choices:
                c.finished = c.stopped = True
            self.queue.put_nowait(exc)


def group_key(req: Request) -> tuple[Any, ...]:
    """Requests with equal keys can share one generate call."""
    p = req.params
    if p.seed is not None:
        return ("seed", id(req))
    sampling = ("greedy",) if p.greedy else ("sample", p.temperature, p.top_p, p.top_k)
    if p.num_beams > 1:
        # n, max_tokens: generate-wide in beam search (num_return_sequences, no per-row stop)
        return ("beam", p.num_beams, p.n, req.max_new, *sampling)
    return sampling


class Batcher:
    """Collects requests into groups and runs one group at a time (an event-loop task).

    Create it on the running loop; the task starts at once.

    Args:
        config: the model entry (its name, ``max_batch_size``, ``batch_wait_timeout_s``).
        context_length: the model's window: a group's longest prompt (every row is
            left-padded to it) plus its largest ``max_new`` stays inside it.
        run_group: runs one group to the end; it fails the group's requests itself
            when generate fails.
    """

    def __init__(
        self,
        config: TransformersModelConfig,
        context_length: int,
        run_group: Callable[[list[Request]], Awaitable[None]],
    ) -> None:
        self.config = config
        self.context_length = context_length
        self.run_group = run_group
        self.incoming: asyncio.Queue[Request | None] = asyncio.Queue()
        self.backlog: list[Request] = []
        self.running: list[Request] = []
        self.closing = False
        self.task = asyncio.create_task(self._batch_loop(), name=f"batcher-{config.name}")
        self.task.add_done_callback(self._on_done)

    def submit(self, req: Request) -> None:
        """Queue ``req`` for a batch."""
        self.incoming.put_nowait(req)

    def close(self, error: BaseException) -> None:
        """Take no more batches: cancel and fail every request with ``error``, wake the task to end."""
        self.closing = True
        self.abort(error, cancel=True)
        self.incoming.put_nowait(None)  # wake the batcher

    def abort(self, error: BaseException, *, cancel: bool = False) -> None:
        """Fail every queued, waiting and running request with ``error``; ``cancel``: mark them cancelled."""
        while not self.incoming.empty():
            req = self.incoming.get_nowait()
            if req is not None:
                self.backlog.append(req)
        for req in [*self.backlog, *self.running]:
            if cancel:
                req.cancelled = True  # the worker's stopping criteria ends generate at the next step
            req.fail(error)
        self.backlog.clear()

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closing:
            if not self.backlog:
                first = await self.incoming.get()
                if first is None:
                    continue
                self.backlog.append(first)
                # the batching window: let concurrent requests join the first one
                deadline = loop.time() + self.config.batch_wait_timeout_s
                while len(self.backlog) < self.config.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.incoming.get(), remaining)
                    except TimeoutError:
                        break
                    if nxt is not None:
                        self.backlog.append(nxt)
            while not self.incoming.empty():  # whatever queued up during the last generate
                nxt = self.incoming.get_nowait()
                if nxt is not None:
                    self.backlog.append(nxt)
            self.backlog = [r for r in self.backlog if not r.cancelled]
            if self.backlog and not self.closing:
                group = self._take_group()
                self.running = group
                try:
                    await self.run_group(group)
                finally:
                    self.running = []

    def _take_group(self) -> list[Request]:
        """The oldest request plus compatible ones that fit the batch and the context window."""
        head = self.backlog[0]
        group, width, max_new = [head], len(head.prompt_ids), head.max_new
        for req in self.backlog[1:]:
            if len(group) >= self.config.max_batch_size:
                break
            w, m = max(width, len(req.prompt_ids)), max(max_new, req.max_new)
            # left padding puts every row at the longest prompt's length; stay inside the window
            if req.key == head.key and w + m <= self.context_length:
                group.append(req)
                width, max_new = w, m
        taken = {id(r) for r in group}
        self.backlog = [r for r in self.backlog if id(r) not in taken]
        return group

    def _on_done(self, task: asyncio.Task[None]) -> None:
        # a crashed batcher would leave every waiting request hanging: fail them instead
        if task.cancelled() or task.exception() is None:
            return
        logger.error("model %s: batcher crashed", self.config.name, exc_info=task.exception())
        self.abort(ServiceUnavailableError(f"model {self.config.name!r}: the batcher has stopped"))


__all__ = ["Batcher", "Choice", "EngineStats", "Request", "group_key"]

"""Generation for the ``transformers`` engine, worker-thread side: ``model.generate`` and its hooks.

:class:`ModelRunner` runs one group of :class:`~.transformers_batching.Request`
as ONE left-padded ``model.generate`` call, with:

* :class:`BatchStreamer` (a transformers ``BaseStreamer``), whose ``put()`` gets
  the whole batch's next tokens each step and posts them, one
  ``call_soon_threadsafe`` per step, to the event loop;
* :class:`LogprobRecorder` (a ``LogitsProcessor``) when a request wants logprobs;
* :class:`RowsDone` (a ``StoppingCriteria``) that retires a row at its own
  ``max_tokens``, on a stop string, or when its request was cancelled, so
  ``generate`` returns once every row is retired; in beam search,
  :class:`AllCancelled`, once every request of the batch is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from services.generation.protocol import SamplingParams
from services.generation.transformers_batching import Choice, EngineStats, Request


class LogprobRecorder(LogitsProcessor):
    """Keeps the last step's log-softmax so the streamer can read the chosen tokens' logprobs."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def take(self, tokens: torch.Tensor) -> list[tuple[float, list[int], list[float]]]:
        """Per row: the chosen token's logprob, and the ids / logprobs of the top-k."""
        assert self.last is not None, "logits processor not called before streamer.put"
        lp = self.last
        chosen = lp.gather(1, tokens.view(-1, 1).to(lp.device)).squeeze(1).tolist()
        if self.top_k > 0:
            top = lp.topk(min(self.top_k, lp.shape[-1]), dim=-1)
            ids, vals = top.indices.tolist(), top.values.tolist()
        else:
            ids = vals = [[] for _ in chosen]
        return list(zip(chosen, ids, vals, strict=True))


class RowsDone(StoppingCriteria):
    """Retires rows at their own max_tokens, on a stop string seen by the loop, or on cancel."""

    def __init__(self, rows: list[Choice], prompt_len: int) -> None:
        self.rows = rows
        self.prompt_len = prompt_len

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_len
        done = [r.stopped or r.request.cancelled or produced >= r.request.max_new for r in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class AllCancelled(StoppingCriteria):
    """Beam search: stop once every request of the batch is cancelled."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        stop = all(r.cancelled for r in self.requests)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class BatchStreamer(BaseStreamer):
    """Splits each step's batch of tokens per row and posts them to the event loop."""

    def __init__(
        self,
        rows: list[Choice],
        stats: EngineStats,
        eos_ids: frozenset[int],
        recorder: LogprobRecorder | None,
        post: Callable[..., None],
        on_tokens: Callable[[list[tuple[Choice, int, Any]]], None],
        on_end: Callable[[list[Choice]], None],
    ) -> None:
        self.rows, self.stats, self.eos_ids, self.recorder = rows, stats, eos_ids, recorder
        self.post, self.on_tokens, self.on_end = post, on_tokens, on_end
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt ids
            self.prompt_seen = True
            return
        self.stats.decode_steps += 1
        tokens = value.view(-1)
        logprobs = self.recorder.take(tokens) if self.recorder is not None else None
        items: list[tuple[Choice, int, Any]] = []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            if row.stopped or row.request.cancelled:
                continue  # finished rows are fed padding; cancelled ones nobody reads
            row.produced += 1
            if token in self.eos_ids or row.produced >= row.request.max_new:
                row.stopped = True
            wants = logprobs is not None and row.request.params.logprobs is not None
            items.append((row, token, logprobs[i] if wants and logprobs else None))
        if items:
            self.post(self.on_tokens, items)

    def end(self) -> None:
        self.post(self.on_end, self.rows)


class ModelRunner:
    """Runs one group as one left-padded ``model.generate`` call (in the worker thread).

    Args:
        model: the loaded ``AutoModelForCausalLM``.
        device: where the inputs go (the model's device).
        pad_id: the id padded positions hold (masked out).
        eos_ids: the ids that end a sequence.
    """

    def __init__(self, model: Any, device: torch.device | None, pad_id: int, eos_ids: frozenset[int]) -> None:
        self.model, self.device, self.pad_id, self.eos_ids = model, device, pad_id, eos_ids

    def sample(
        self,
        group: list[Request],
        seed: int,
        loop: asyncio.AbstractEventLoop,
        stats: EngineStats,
        on_tokens: Callable[[list[tuple[Choice, int, Any]]], None],
        on_end: Callable[[list[Choice]], None],
    ) -> None:
        """One streamed generate over every sampling/greedy row of ``group``.

        Each step's tokens go to ``on_tokens`` and the end to ``on_end``, both called on ``loop``.
        """
        rows = [c for req in group for c in req.choices]
        input_ids, mask = self._padded([c.request.prompt_ids for c in rows])
        want = [r.params.logprobs for r in group if r.params.logprobs is not None]
        recorder = LogprobRecorder(max(want)) if want else None

        def post(callback: Callable[..., None], arg: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, arg)
            except RuntimeError:  # loop closed: nobody is listening, stop producing
                for row in rows:
                    row.stopped = True

        streamer = BatchStreamer(rows, stats, self.eos_ids, recorder, post, on_tokens, on_end)
        torch.manual_seed(seed)
        self.model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=max(r.max_new for r in group),
            streamer=streamer,
            logits_processor=LogitsProcessorList([recorder]) if recorder else None,
            stopping_criteria=StoppingCriteriaList([RowsDone(rows, input_ids.shape[1])]),
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
            **_decoding_kwargs(group[0].params),
        )

    def beam_search(self, group: list[Request], seed: int) -> list[list[list[int]]]:
        """Beam search over ``group``; returns n token lists per request."""
        params = group[0].params
        input_ids, mask = self._padded([r.prompt_ids for r in group])
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=group[0].max_new,
            num_beams=params.num_beams,
            num_return_sequences=params.n,
            stopping_criteria=StoppingCriteriaList([AllCancelled(group)]),
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
            **_decoding_kwargs(params),
        )
        new = out[:, input_ids.shape[1] :].tolist()
        return [new[i * params.n : (i + 1) * params.n] for i in range(len(group))]

    def prompt_logprobs(self, ids: list[int], top_k: int) -> list[tuple[float, list[int], list[float]]]:
        """``echo``: per prompt token after the first, its logprob given the tokens before it,
        and the ids / logprobs of the ``top_k`` most likely tokens there.

        One forward pass over the prompt; the log-softmax of the raw logits (no logits
        processors: nothing is being sampled), the distribution likelihood benchmarks score.
        """
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=input_ids).logits[0, :-1].float()
            lp = torch.log_softmax(logits, dim=-1)
            targets = input_ids[0, 1:].view(-1, 1)
            chosen = lp.gather(1, targets).squeeze(1).tolist()
            if top_k > 0 and len(chosen):
                top = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
                top_ids, top_vals = top.indices.tolist(), top.values.tolist()
            else:
                top_ids = top_vals = [[] for _ in chosen]
        return list(zip(chosen, top_ids, top_vals, strict=True))

    def _padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and attention mask (decoder-only models continue on the right)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)


def _decoding_kwargs(params: SamplingParams) -> dict[str, Any]:
    if params.greedy:
        return {"do_sample": False}
    # top_k=0 must be explicit: transformers' own default is 50
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
    }


__all__ = ["AllCancelled", "BatchStreamer", "LogprobRecorder", "ModelRunner", "RowsDone"]

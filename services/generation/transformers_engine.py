"""The ``transformers`` engine: any local Hugging Face causal LM, batched, on CPU or GPU.

Requests are batched, not run one at a time. A background *batcher* task
(:class:`~.transformers_batching.Batcher`) takes a request, waits up to
``batch_wait_timeout_s`` for others (at most ``max_batch_size`` requests), and
runs the oldest request's *group* - the waiting requests with the same decoding
config (greedy; or the same temperature / top_p / top_k; beam search also needs
the same num_beams, n and max_tokens) - as ONE left-padded ``model.generate``
call in a single worker thread (the model is not thread-safe, so one generate
runs at a time; the next batch waits for it). Requests with a ``seed`` run as
their own group, so their output depends on the seed only and not on who else
was waiting.

Threads and the event loop split the work so the loop never blocks and the
tokenizer is only ever used from the loop thread (the hooks named here are in
:mod:`.transformers_generate`):

* worker thread: ``model.generate`` with :class:`BatchStreamer` (a transformers
  ``BaseStreamer``), whose ``put()`` gets the whole batch's next tokens each step
  and posts them, one ``call_soon_threadsafe`` per step, to the loop; with
  :class:`LogprobRecorder` (a ``LogitsProcessor``) when a request wants logprobs;
  and with :class:`RowsDone` (a ``StoppingCriteria``) that retires a row at its
  own ``max_tokens``, on a stop string, or when its request was cancelled. When
  every row is retired ``generate`` returns early (cancellation stops compute).
* event loop: per sequence, a :class:`~.text_stream.TextStream` for incremental
  detokenization (vLLM's prefix/read offset scheme, holding back text that ends
  in an incomplete UTF-8 character) and stop-string search (holding back any
  suffix that may start a stop string, so a stop string split across tokens is
  still caught and never emitted); and the per-request ``asyncio.Queue`` of
  :class:`GenerationChunk` deltas.

Semantics worth knowing:

* ``n > 1`` with sampling repeats the prompt row ``n`` times (what
  ``num_return_sequences`` does) so different n's still share a batch.
* ``num_beams > 1`` is beam search: transformers streamers do not support beams,
  so each choice arrives as ONE chunk at the end. It needs ``n <= num_beams`` and
  no ``logprobs``; its cancellation stops the batch only once all its requests are
  cancelled.
* ``logprobs`` are the log-softmax of the logits after the model's own default
  processors (e.g. a repetition penalty from its ``generation_config.json``) but
  before temperature / top-k / top-p, i.e. the model's distribution, as vLLM
  reports by default. Every generated token, including EOS and the tokens of a
  stop string, is counted in ``num_tokens`` and carries a logprob entry.
* ``echo`` (completions) first sends, per choice, the prompt text as a chunk of 0
  counted tokens with the prompt tokens' logprobs when ``logprobs`` is set (one
  forward pass in the worker thread; the first token's logprob is None, as OpenAI
  reports it); ``max_tokens=0`` then ends the choice (``"length"``) without
  generating: a prompt's likelihood, for scoring benchmarks.
* ``dtype="auto"`` is float32 on CPU (half precision is slow or unsupported
  there) and the checkpoint's dtype on GPU.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.errors import ContextLengthExceededError, InvalidRequestError, ServiceUnavailableError
from services.generation.config import TransformersModelConfig
from services.generation.protocol import (
    ALL_SAMPLING_PARAMS,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from services.generation.text_stream import find_stop
from services.generation.transformers_batching import Batcher, Choice, EngineStats, Request
from services.generation.transformers_generate import ModelRunner

logger = logging.getLogger("llmops.generation")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# tokenizer.model_max_length above this is transformers' "unset" sentinel, not a limit
_SANE_MAX_LENGTH = 10_000_000
_FALLBACK_CONTEXT_LENGTH = 2048
_SHUTDOWN_WAIT_S = 60.0


class TransformersEngine:
    """:class:`~services.generation.protocol.Engine` over ``AutoModelForCausalLM.generate``.

    Args:
        config: the model entry (path, device, dtype, batching knobs).

    ``stats`` (:class:`EngineStats`) counts generate calls and batch sizes.
    Use the engine from the event loop it was started on.
    """

    kind = "transformers"
    supported_params: frozenset[str] = ALL_SAMPLING_PARAMS

    def __init__(self, config: TransformersModelConfig) -> None:
        self.config = config
        self.stats = EngineStats()
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: torch.device | None = None
        self._context_length: int | None = config.context_length
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._token_text: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: Batcher | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load model and tokenizer (in a thread) and start the batcher.

        Raises:
            FileNotFoundError: ``config.path`` is not a model directory.
            RuntimeError: transformers could not load it (message names the path).
        """
        if self._model is not None:
            return
        path = await asyncio.to_thread(self._load)
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-generate")
        self._batcher = Batcher(self.config, self.context_length, self._run_group)
        logger.info(
            "transformers model %s loaded from %s on %s (context %d)",
            self.config.name,
            path,
            self._device,
            self.context_length,
        )

    def _load(self) -> Path:
        """Blocking part of :meth:`start` (runs in a thread); returns the model directory."""
        path = Path(self.config.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"model {self.config.name!r}: path {str(path)!r} is not a directory "
                "(expected a local Hugging Face model directory)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {self.config.name!r}: {str(path)!r} has no config.json")
        wanted = self.config.device
        device = (
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if wanted == "auto"
            else torch.device(wanted)
        )
        if self.config.dtype != "auto":
            dtype: Any = _DTYPES[self.config.dtype]
        else:
            dtype = "auto" if device.type == "cuda" else torch.float32
        remote = self.config.trust_remote_code
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=remote)
            model: Any = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, trust_remote_code=remote, dtype=dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"could not load a transformers causal LM from {str(path)!r}: {exc}") from exc
        model.to(device).eval()

        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(source)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(eos) if eos else 0  # padded positions are masked out; any id works
        if self._context_length is None:
            text_config = model.config.get_text_config()
            limit = getattr(text_config, "max_position_embeddings", None)
            if not limit and 0 < (tokenizer.model_max_length or 0) < _SANE_MAX_LENGTH:
                limit = tokenizer.model_max_length
            self._context_length = int(limit or _FALLBACK_CONTEXT_LENGTH)
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self._eos_ids, self._pad_id = frozenset(eos), int(pad)
        return path

    async def engine_stats(self) -> dict[str, float]:
        """Requests decoding in the batch and waiting for a slot in it."""
        batcher = self._batcher
        if batcher is None:
            return {}
        return {
            "running_requests": float(len(batcher.running)),
            "waiting_requests": float(batcher.incoming.qsize() + len(batcher.backlog)),
        }

    async def check_health(self) -> None:
        """Raise :class:`ServiceUnavailableError` when the engine cannot serve."""
        batcher = self._batcher
        if self._model is None or (batcher is not None and batcher.closing):
            raise ServiceUnavailableError(f"model {self.config.name!r} is not loaded")
        if batcher is None or batcher.task.done():
            raise ServiceUnavailableError(f"model {self.config.name!r}: the batcher has stopped")

    async def shutdown(self) -> None:
        """Abort every request, wait for the running generate to stop, free the model."""
        batcher = self._batcher
        if (batcher is not None and batcher.closing) or self._model is None:
            return
        assert batcher is not None
        # every request fails; the worker's stopping criteria ends generate at the next step
        batcher.close(ServiceUnavailableError(f"model {self.config.name!r} is shutting down"))
        try:
            await asyncio.wait_for(batcher.task, _SHUTDOWN_WAIT_S)
        except TimeoutError:
            logger.warning("model %s: batcher did not stop in %.0fs", self.config.name, _SHUTDOWN_WAIT_S)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- tokenizer -------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        """``config.context_length``, else the model's ``max_position_embeddings``."""
        if self._context_length is None:
            raise ServiceUnavailableError(f"model {self.config.name!r} is not loaded")
        return self._context_length

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The tokenizer's chat template with the generation prompt.

        Without a template: one ``"<role>: <content>"`` line per message, then ``"assistant:"``.
        """
        tok = self._require_tokenizer()
        if getattr(tok, "chat_template", None):
            rendered = tok.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                tokenize=False,
                add_generation_prompt=True,
            )
            return str(rendered)
        return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` is as a prompt (the same encoding :meth:`generate` uses)."""
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        tok = self._require_tokenizer()
        # a rendered chat template usually starts with BOS already; do not add a second one
        bos = tok.bos_token
        add_special = not (bos and text.startswith(bos))
        return list(tok.encode(text, add_special_tokens=add_special))

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise ServiceUnavailableError(f"model {self.config.name!r} is not loaded")
        return self._tokenizer

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    # ---- requests --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the completion as :class:`GenerationChunk` deltas.

        Raises:
            InvalidRequestError: a parameter combination this engine cannot honour.
            ContextLengthExceededError: the prompt leaves no room (or less than max_tokens).
            ServiceUnavailableError: not started, or shutting down.
        """
        batcher = self._batcher
        if batcher is None or batcher.closing:
            raise ServiceUnavailableError(f"model {self.config.name!r} is not loaded")
        params = request.params
        _validate(params)
        prompt = request.prompt if request.prompt is not None else self.render_chat(request.messages or ())
        ids = self._encode(prompt)
        if not ids:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise InvalidRequestError("The prompt is empty.", param="prompt", value=prompt)
            ids = [bos]
        max_new = self._max_new(params, len(ids), request)
        if params.echo:
            echoed = await self._echo(prompt, ids, params, finished=max_new == 0)
            for chunk in echoed:
                yield chunk
            if max_new == 0:
                return
        req = Request(request.request_id, params, ids, max_new, self._decode)
        if params.echo:
            for choice in req.choices:
                choice.first_sent = True  # the echo chunk carried prompt_tokens
        batcher.submit(req)
        open_choices = params.n
        try:
            while open_choices:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    open_choices -= 1
                yield item
        finally:
            # client gone (aclose / CancelledError) or done: the worker retires its rows
            req.cancelled = True

    def _max_new(self, params: SamplingParams, prompt_len: int, request: GenerationRequest) -> int:
        room = self.context_length - prompt_len
        param = "messages" if request.messages is not None else "prompt"
        if room <= 0 or (params.max_tokens is not None and params.max_tokens > room):
            asked = prompt_len + (params.max_tokens or 0)
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.context_length} tokens; your request has "
                f"{prompt_len} prompt tokens"
                + (f" and asks for {params.max_tokens} completion tokens." if params.max_tokens else "."),
                param="max_tokens" if room > 0 else param,
                value=asked,
            )
        if params.max_tokens is None:
            return min(self.config.default_max_tokens, room)
        return params.max_tokens

    async def _echo(
        self, prompt: str, ids: list[int], params: SamplingParams, *, finished: bool
    ) -> list[GenerationChunk]:
        """``echo``: per choice, one chunk of the prompt text with 0 counted tokens (and the
        prompt tokens' logprobs when asked; the first token's is None, as OpenAI reports it).

        The forward pass runs in the worker thread, between batches (the model is not
        thread-safe); ``finished``: nothing is generated after it (``max_tokens=0``).
        """
        logprobs: tuple[TokenLogprob, ...] | None = None
        if params.logprobs is not None:
            assert self._loop is not None
            runner = ModelRunner(self._model, self._device, self._pad_id, self._eos_ids)
            k = params.logprobs
            scored = await self._loop.run_in_executor(self._executor, runner.prompt_logprobs, ids, k)
            first = TokenLogprob(self._token_str(ids[0]), None, ())
            logprobs = (
                first,
                *(
                    TokenLogprob(
                        self._token_str(t),
                        chosen,
                        tuple((self._token_str(i), v) for i, v in zip(tids, vals, strict=True)),
                    )
                    for t, (chosen, tids, vals) in zip(ids[1:], scored, strict=True)
                ),
            )
        reason: FinishReason | None = "length" if finished else None
        return [
            GenerationChunk(
                index=i,
                text=prompt,
                num_tokens=0,
                finish_reason=reason,
                logprobs=logprobs,
                prompt_tokens=len(ids),
            )
            for i in range(params.n)
        ]

    # ---- batcher (event loop) --------------------------------------------------------

    async def _run_group(self, group: list[Request]) -> None:
        """One generate call over ``group`` (the batcher's ``run_group``); fails it on an error."""
        assert self._loop is not None
        params = group[0].params
        beam = params.num_beams > 1
        rows = len(group) * (params.num_beams if beam else params.n)
        self.stats.generate_calls += 1
        self.stats.requests += len(group)
        self.stats.max_batch_requests = max(self.stats.max_batch_requests, len(group))
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, rows)
        # unseeded batches get a fresh random seed: no stream of a past seeded request repeats
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        runner = ModelRunner(self._model, self._device, self._pad_id, self._eos_ids)
        self.stats.running = True
        try:
            if beam:
                sequences = await self._loop.run_in_executor(self._executor, runner.beam_search, group, seed)
                self._finish_beams(group, sequences)
            else:
                # chunks reach the request queues from the streamer while this runs
                await self._loop.run_in_executor(
                    self._executor,
                    runner.sample,
                    group,
                    seed,
                    self._loop,
                    self.stats,
                    self._on_tokens,
                    self._on_end,
                )
        except Exception as exc:
            logger.exception("model %s: generate failed for %d requests", self.config.name, len(group))
            for req in group:
                req.fail(exc)
        finally:
            self.stats.running = False

    # ---- detokenization and chunks (event loop) --------------------------------------

    def _on_tokens(self, items: list[tuple[Choice, int, Any]]) -> None:
        for choice, token, logprob in items:
            if not choice.finished and not choice.request.cancelled:
                self._accept(choice, token, logprob)

    def _on_end(self, rows: list[Choice]) -> None:
        # generate stopped before the row did (it never should): close it as "length"
        for choice in rows:
            if not choice.finished and not choice.request.cancelled:
                choice.settle("length")

    def _accept(
        self, choice: Choice, token: int, logprob: tuple[float, list[int], list[float]] | None
    ) -> None:
        req = choice.request
        choice.generated += 1
        choice.pending_tokens += 1
        if logprob is not None:
            k = req.params.logprobs or 0
            chosen, top_ids, top_vals = logprob
            top = tuple((self._token_str(t), v) for t, v in zip(top_ids[:k], top_vals[:k], strict=True))
            choice.pending_logprobs.append(TokenLogprob(self._token_str(token), chosen, top))
        if token in self._eos_ids:
            choice.settle("stop")  # EOS itself is never part of the text
        else:
            choice.text_stream.append(token)
            choice.settle("length" if choice.generated >= req.max_new else None)

    def _token_str(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = str(self._tokenizer.decode([token]))
        return text

    def _finish_beams(self, group: list[Request], sequences: list[list[list[int]]]) -> None:
        """One final chunk per beam-search choice: cut at EOS, then at a stop string."""
        for req, seqs in zip(group, sequences, strict=True):
            if req.cancelled:
                continue
            for choice, seq in zip(req.choices, seqs, strict=True):
                end = next((i for i, t in enumerate(seq) if t in self._eos_ids), None)
                tokens = seq if end is None else seq[: end + 1]
                reason: FinishReason = "stop" if end is not None or len(seq) < req.max_new else "length"
                text = self._decode(tokens if end is None else tokens[:-1])
                cut = find_stop(text, req.params.stop) if req.params.stop else None
                if cut is not None:
                    text, reason = text[:cut], "stop"
                choice.pending_tokens = len(tokens)
                choice.close(reason, text)


def _validate(params: SamplingParams) -> None:
    """Reject combinations this engine cannot honour (ranges are the gateway's job)."""
    if params.max_tokens is not None and params.max_tokens < (0 if params.echo else 1):
        raise InvalidRequestError(
            f"max_tokens must be at least 1 (0 only with echo), got {params.max_tokens}.",
            param="max_tokens",
            value=params.max_tokens,
        )
    if params.num_beams > 1:
        if params.n > params.num_beams:
            raise InvalidRequestError(
                f"Beam search returns at most num_beams sequences; got n={params.n} > "
                f"num_beams={params.num_beams}.",
                param="n",
                value=params.n,
            )
        if params.logprobs is not None:
            raise InvalidRequestError(
                "logprobs are not available with beam search (num_beams > 1).",
                param="logprobs",
                value=params.logprobs,
            )


__all__ = ["EngineStats", "TransformersEngine"]

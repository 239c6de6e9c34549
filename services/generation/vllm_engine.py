"""The ``vllm`` engine: vLLM 0.26's async (v1) engine, ``AsyncLLM``, on one or more GPUs.

vLLM is imported lazily, inside :meth:`VLLMEngine.start` and the methods it
enables, so this module imports on a CPU-only install (the engine factory only
builds this class for ``engine: vllm`` entries).

What maps onto what:

* a request's prompt is tokenized here (in a worker thread) and handed to
  ``AsyncLLM.generate`` as a token input, so the prompt is tokenized once and
  chat prompts get no second BOS (the chat template already has one; vLLM's own
  chat path tokenizes with ``add_special_tokens=False`` too);
* sampling runs with ``output_kind=DELTA``: every ``RequestOutput`` carries only
  the new text and token ids of each choice, keyed by ``CompletionOutput.index``
  (vLLM fans ``n > 1`` out into child requests and streams their deltas through
  the one generator);
* ``num_beams > 1`` runs vLLM's own online beam search (the loop its OpenAI server
  uses for ``use_beam_search``), which returns every beam at the end in one piece;
* closing the chunk iterator aborts the request in vLLM, and so does cancelling
  the task while it waits on vLLM (the generation deployment closes the iterator
  when Serve cancels the call).

The translation between our types and vLLM's (sampling params, finish reasons,
logprobs, beam search) is in :mod:`.vllm_mapping`; the stat logger behind
:meth:`VLLMEngine.engine_stats` is in :mod:`.vllm_stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from functools import partial
from typing import Any

from services.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from services.generation.config import VLLMModelConfig
from services.generation.protocol import (
    ALL_SAMPLING_PARAMS,
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from services.generation.vllm_mapping import (
    FINISH_REASONS,
    check_beam_params,
    finish_reason,
    invalid_request,
    make_beam_searcher,
    prompt_len,
    token_logprobs,
    vllm_sampling_params,
)
from services.generation.vllm_stats import StatsSink, stat_logger_factory

logger = logging.getLogger("llmops.generation.vllm")

GPU_EXTRA_HINT = "engine 'vllm' needs the gpu extra: pip install 'llmops-platform[gpu]'"

# AsyncEngineArgs fields that VLLMModelConfig sets through its own typed fields.
_TYPED_ENGINE_ARGS = frozenset(
    {
        "model",
        "dtype",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "enforce_eager",
    }
)


class VLLMEngine:
    """vLLM ``AsyncLLM`` behind the :class:`~services.generation.protocol.Engine` protocol.

    Args:
        config: the model entry (``engine: vllm``). ``engine_args`` is passed to
            ``AsyncEngineArgs`` unchanged, except that it may not repeat a field the
            config has a typed field for.
    """

    kind = "vllm"
    # echo is not mapped onto vLLM's prompt_logprobs yet (it needs a GPU to test): an echo
    # request is a 400 unsupported_parameter naming it, and CrowS-Pairs falls back to its
    # A/B choice prompt on this engine
    supported_params: frozenset[str] = ALL_SAMPLING_PARAMS - {"echo"}

    def __init__(self, config: VLLMModelConfig) -> None:
        self.config = config
        self._engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Any = None
        self._context_length: int | None = None
        self._stats = StatsSink()
        self._beam_searcher: Any = None
        # Prompt tokenization is CPU work; it runs here, not on the replica's event loop.
        self._tokenize_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def context_length(self) -> int:
        if self._context_length is None:
            raise ServiceUnavailableError(f"engine 'vllm' for model {self.config.name!r} is not started")
        return self._context_length

    @property
    def async_llm(self) -> Any:
        """The running ``vllm.v1.engine.async_llm.AsyncLLM`` (for tests and observability)."""
        return self._require_engine()

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments :meth:`start` passes to ``AsyncEngineArgs``."""
        c = self.config
        clash = sorted(_TYPED_ENGINE_ARGS & c.engine_args.keys())
        if clash:
            raise ValueError(
                f"model {c.name!r}: engine_args repeats {clash}; set them as the model's own fields instead"
            )
        args: dict[str, Any] = {
            "model": c.path,
            "dtype": c.dtype,
            "tensor_parallel_size": c.tensor_parallel_size,
            "gpu_memory_utilization": c.gpu_memory_utilization,
            "enforce_eager": c.enforce_eager,
            # vLLM's periodic stats log lines are off; engine_stats() still gets the
            # scheduler stats through the stat logger start() installs.
            "disable_log_stats": True,
            "enable_log_requests": False,
        }
        if c.max_model_len is not None:
            args["max_model_len"] = c.max_model_len
        if c.max_num_seqs is not None:
            args["max_num_seqs"] = c.max_num_seqs
        args.update(c.engine_args)
        return args

    async def start(self) -> None:
        """Build ``AsyncLLM`` (loads the weights, profiles memory, captures graphs).

        Like vLLM's own server, the engine is constructed on the running loop: this
        blocks it for the load time (tens of seconds to minutes), before any request
        can arrive.

        Raises:
            ImportError: vLLM is not installed.
            ValueError: ``engine_args`` names an unknown or duplicated argument.
        """
        if self._engine is not None:
            return
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ImportError(GPU_EXTRA_HINT, name="vllm") from exc

        kwargs = self.engine_args()
        known = {f.name for f in fields(AsyncEngineArgs)}
        unknown = sorted(kwargs.keys() - known)
        if unknown:
            raise ValueError(
                f"model {self.config.name!r}: unknown vLLM engine_args {unknown} (see vllm AsyncEngineArgs)"
            )
        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**kwargs), stat_loggers=[stat_logger_factory(self._stats)]
        )
        self._engine = engine
        self._tokenizer = engine.get_tokenizer()
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-tokenize")
        # model_config.max_model_len is final here (vLLM may have auto-fitted it to the KV cache).
        model_len = int(engine.model_config.max_model_len)
        wanted = self.config.context_length
        if wanted is not None and wanted > model_len:
            logger.warning(
                "model %s: context_length %d is over vLLM's max_model_len %d; using %d",
                self.config.name,
                wanted,
                model_len,
                model_len,
            )
        self._context_length = min(wanted, model_len) if wanted is not None else model_len
        logger.info("vLLM engine for %s ready (context %d tokens)", self.config.name, self._context_length)

    async def check_health(self) -> None:
        """Raise :class:`ServiceUnavailableError` when vLLM's engine core is dead."""
        engine = self._require_engine()
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            await engine.check_health()
        except EngineDeadError as exc:
            raise ServiceUnavailableError("the vLLM engine core is dead") from exc

    async def shutdown(self) -> None:
        """Stop vLLM's engine core processes and free the GPU memory."""
        engine, self._engine = self._engine, None
        pool, self._tokenize_pool = self._tokenize_pool, None
        self._beam_searcher = None
        if engine is not None:
            engine.shutdown()
        if pool is not None:
            pool.shutdown(wait=False)

    async def engine_stats(self) -> dict[str, float]:
        """What vLLM's scheduler last reported, plus totals since start.

        Read from the ``SchedulerStats`` / ``IterationStats`` vLLM hands its stat
        loggers once per engine step (no Prometheus scrape involved), so gauges are
        as of the last step, summed over data-parallel engines:

        * ``running_requests``, ``waiting_requests``: scheduler queues (sequences:
          a request with ``n=2`` counts twice);
        * ``kv_cache_usage_ratio``: fraction of KV-cache blocks in use (0-1);
        * ``unfinished_requests``: sequences the frontend is still streaming (exact,
          read now);
        * ``prompt_tokens_total``, ``generation_tokens_total``,
          ``prefix_cache_queries_tokens_total``, ``prefix_cache_hits_tokens_total``,
          ``preemptions_total``: counters since start.

        Empty before :meth:`start`. (vLLM also keeps its own ``vllm:`` Prometheus
        metrics in the process's default registry, as it always does when stats are
        on; nothing here exposes them.)
        """
        if self._engine is None:
            return {}
        stats = self._stats.snapshot()
        stats["unfinished_requests"] = float(self._engine.output_processor.get_num_unfinished_requests())
        return stats

    # ------------------------------------------------------------------ prompts

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The chat template applied to ``messages``, ending with the assistant turn's header.

        Raises:
            InvalidRequestError: the model has no chat template, or the template
                rejects the conversation (e.g. a role it does not know).
        """
        from jinja2 import TemplateError

        tokenizer = self._require_tokenizer()
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except (ValueError, TemplateError) as exc:
            raise InvalidRequestError(
                f"The chat template of model {self.config.name!r} cannot render these messages: {exc}",
                param="messages",
            ) from exc
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
        return text

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a completion prompt (with the tokenizer's special tokens).

        For an already rendered chat prompt this is one more than vLLM runs when the
        template writes the BOS itself: an over-count, so a context check on it errs
        on the safe side.
        """
        return len(self._require_tokenizer().encode(text))

    async def _tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        tokenizer = self._require_tokenizer()
        encode = partial(tokenizer.encode, text, add_special_tokens=add_special_tokens)
        return list(await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, encode))

    # ------------------------------------------------------------------ generation

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the completion's deltas; closing the iterator aborts the request in vLLM.

        Raises:
            ContextLengthExceededError: the prompt leaves no room for a completion.
            InvalidRequestError: vLLM rejects the parameters (e.g. ``logprobs`` over
                its ``max_logprobs``), or a combination beam search cannot honour.
            ServiceUnavailableError: the engine is not started, died, or aborted the
                request itself.
        """
        engine = self._require_engine()
        from vllm.inputs import tokens_input

        if request.prompt is not None:
            text, add_special, param = request.prompt, True, "prompt"
        else:
            text, add_special, param = self.render_chat(request.messages or ()), False, "messages"
        prompt_ids = await self._tokenize(text, add_special)
        prompt_tokens = len(prompt_ids)
        room = self.context_length - prompt_tokens
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.context_length} tokens; "
                f"your request has {prompt_tokens} input tokens.",
                param=param,
                value=prompt_tokens,
            )
        params = request.params
        wanted = params.max_tokens if params.max_tokens is not None else self.config.default_max_tokens
        params = replace(params, max_tokens=min(wanted, room))
        engine_input = tokens_input(prompt_ids, prompt=text)

        if params.num_beams > 1:
            chunks = self._beam_search(engine, engine_input, params, request.request_id, prompt_tokens)
        else:
            chunks = self._sample(engine, engine_input, params, request.request_id, prompt_tokens)
        async with contextlib.aclosing(chunks) as stream:
            async for chunk in stream:
                yield chunk

    async def _sample(
        self,
        engine: Any,
        engine_input: Any,
        params: SamplingParams,
        request_id: str,
        prompt_tokens: int,
    ) -> AsyncGenerator[GenerationChunk, None]:
        from vllm.v1.engine.exceptions import EngineDeadError

        # vLLM rejects n > 1 with greedy sampling (SamplingParams._verify_greedy_sampling);
        # the n greedy completions are the same text, so run one and repeat its chunks.
        copies = params.n if params.greedy and params.n > 1 else 1
        sampling = vllm_sampling_params(params, n=params.n if copies == 1 else 1)
        outputs = engine.generate(engine_input, sampling, request_id)
        started: set[int] = set()
        finished = produced = False
        try:
            async for out in outputs:
                produced = True
                finished = out.finished
                for choice in out.outputs:
                    finish = finish_reason(choice.finish_reason)
                    token_ids = list(choice.token_ids)
                    if not token_ids and not choice.text and finish is None:
                        continue
                    chunk = GenerationChunk(
                        index=choice.index,
                        text=choice.text,
                        num_tokens=len(token_ids),
                        finish_reason=finish,
                        logprobs=token_logprobs(
                            token_ids, choice.logprobs, params.logprobs, self._decode_ids
                        ),
                        prompt_tokens=None if choice.index in started else prompt_len(out, prompt_tokens),
                    )
                    started.add(choice.index)
                    for i in range(copies):
                        yield chunk if copies == 1 else replace(chunk, index=i)
        except EngineDeadError as exc:
            raise ServiceUnavailableError("the vLLM engine core died during the request") from exc
        except ValueError as exc:
            # AsyncLLM.generate re-raises request validation errors as they are.
            if produced:
                raise
            raise invalid_request(exc) from exc
        finally:
            if not finished:
                # Closing vLLM's generator aborts its request (AsyncLLM.generate's
                # GeneratorExit handler); aborting the external id too also covers
                # the case where the generator never got to run.
                await outputs.aclose()
                await _abort(engine, request_id)

    async def _beam_search(
        self,
        engine: Any,
        engine_input: Any,
        params: SamplingParams,
        request_id: str,
        prompt_tokens: int,
    ) -> AsyncGenerator[GenerationChunk, None]:
        from vllm.sampling_params import BeamSearchParams
        from vllm.v1.engine.exceptions import EngineDeadError

        check_beam_params(params, engine.model_config.max_logprobs)
        if self._beam_searcher is None:
            self._beam_searcher = make_beam_searcher(engine)
        beam_params = BeamSearchParams(
            beam_width=params.num_beams, max_tokens=params.max_tokens, temperature=params.temperature
        )
        # One RequestOutput at the end, beams best first; each step runs as its own
        # vLLM request (ids "<request_id>-<uuid>-beam-<i>"), aborted by vLLM itself
        # when this task is cancelled.
        outputs = self._beam_searcher.beam_search(engine_input, request_id, beam_params)
        try:
            async for out in outputs:
                for choice in sorted(out.outputs, key=lambda c: c.index)[: params.n]:
                    if choice.finish_reason == "error":
                        raise RuntimeError(f"vLLM beam search failed for request {request_id}")
                    token_ids = list(choice.token_ids)
                    yield GenerationChunk(
                        index=choice.index,
                        # vLLM decodes beams with special tokens; sampling skips them.
                        text=self._require_tokenizer().decode(token_ids, skip_special_tokens=True),
                        num_tokens=len(token_ids),
                        finish_reason=FINISH_REASONS.get(choice.finish_reason or "length", "length"),
                        logprobs=token_logprobs(
                            token_ids, choice.logprobs, params.logprobs, self._decode_ids
                        ),
                        prompt_tokens=prompt_tokens,
                    )
        except EngineDeadError as exc:
            raise ServiceUnavailableError("the vLLM engine core died during the request") from exc
        finally:
            await outputs.aclose()

    # ------------------------------------------------------------------ helpers

    def _decode_ids(self, token_ids: list[int]) -> list[str]:
        from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens

        return convert_ids_list_to_tokens(self._require_tokenizer(), token_ids)

    def _require_engine(self) -> Any:
        if self._engine is None:
            raise ServiceUnavailableError(f"engine 'vllm' for model {self.config.name!r} is not started")
        return self._engine

    def _require_tokenizer(self) -> Any:
        self._require_engine()
        return self._tokenizer


async def _abort(engine: Any, request_id: str) -> None:
    try:
        await engine.abort(request_id)
    except Exception:  # must not hide the error that ended the stream
        logger.warning("aborting vLLM request %s failed", request_id, exc_info=True)

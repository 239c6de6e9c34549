"""How our requests and results map onto vLLM's, for :mod:`.vllm_engine`.

* :func:`vllm_sampling_params`: our :class:`SamplingParams` as vLLM's, streaming deltas;
* :func:`check_beam_params` and :func:`make_beam_searcher`: beam search, which
  vLLM 0.26 runs in a serving-layer mixin rather than in ``AsyncLLM``;
* :func:`finish_reason`, :func:`token_logprobs`, :func:`prompt_len`: vLLM's
  ``CompletionOutput`` / ``RequestOutput`` fields as ours;
* :func:`invalid_request`: vLLM's request validation errors as ours.

vLLM is imported inside the functions that need it, so this module imports on a
CPU-only install.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from services.errors import InvalidRequestError, ServiceUnavailableError
from services.generation.protocol import FinishReason, SamplingParams, TokenLogprob

# vLLM finish reasons (vllm/v1/engine/__init__.py FINISH_REASON_STRINGS) that end a
# choice normally. "repetition" only fires with repetition_detection, which is never
# set here; it still ends the text on the model's side, like a stop.
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "repetition": "stop"}

# The OpenAI server of vLLM clamps -inf logprobs the same way (JSON has no -inf).
_MIN_LOGPROB = -9999.0


def vllm_sampling_params(params: SamplingParams, *, n: int) -> Any:
    """vLLM ``SamplingParams`` for ours, streaming deltas."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VLLMSamplingParams

    try:
        return VLLMSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,  # 0 disables top-k in vLLM as here
            seed=params.seed,
            stop=list(params.stop),
            max_tokens=params.max_tokens,
            logprobs=params.logprobs,
            output_kind=RequestOutputKind.DELTA,
            skip_clone=True,  # built fresh per request, as vLLM's OpenAI server does
        )
    except ValueError as exc:  # VLLMValidationError is a ValueError
        raise invalid_request(exc) from exc


def check_beam_params(params: SamplingParams, max_logprobs: int) -> None:
    """Reject what vLLM's beam search would silently ignore or refuse."""
    if params.n > params.num_beams:
        raise InvalidRequestError(
            f"n ({params.n}) must not exceed num_beams ({params.num_beams}).", param="n", value=params.n
        )
    for name in ("stop", "top_p", "top_k"):
        if not params.is_default(name):
            raise InvalidRequestError(
                f"'{name}' cannot be combined with beam search (num_beams > 1).",
                param=name,
                value=getattr(params, name),
            )
    # Each beam step asks vLLM for 2 * num_beams candidate logprobs.
    if max_logprobs != -1 and 2 * params.num_beams > max_logprobs:
        raise InvalidRequestError(
            f"num_beams must be at most {max_logprobs // 2} for this model (got {params.num_beams}).",
            param="num_beams",
            value=params.num_beams,
        )


def invalid_request(exc: ValueError) -> InvalidRequestError:
    """A vLLM request validation error as ours (VLLMValidationError names the parameter)."""
    message = exc.args[0] if exc.args else str(exc)
    return InvalidRequestError(
        str(message), param=getattr(exc, "parameter", None), value=getattr(exc, "value", None)
    )


def finish_reason(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    mapped = FINISH_REASONS.get(reason)
    if mapped is not None:
        return mapped
    if reason == "abort":
        # Not our abort (that only happens once the consumer is gone): vLLM dropped
        # the request itself, e.g. while pausing for a weight update.
        raise ServiceUnavailableError("the vLLM engine aborted the request; retry it")
    raise RuntimeError(f"vLLM finished the request with reason {reason!r}")


def prompt_len(out: Any, fallback: int) -> int:
    ids = out.prompt_token_ids
    return len(ids) if ids is not None else fallback


def token_logprobs(
    token_ids: list[int],
    positions: Any,
    top_k: int | None,
    decode: Callable[[list[int]], list[str]],
) -> tuple[TokenLogprob, ...] | None:
    """vLLM's per-position ``{token_id: Logprob}`` maps as our :class:`TokenLogprob` list.

    Each map holds the sampled token (with its true rank) and the ``top_k`` most
    likely tokens (ranks 1..k). Beam search asks for 2 * num_beams candidates and
    leaves ``decoded_token`` unset; those tokens are decoded here.
    """
    if top_k is None or positions is None:
        return None
    # Positions align with the token ids; beam search keeps one extra map for a
    # dropped EOS at the end, which has no token here.
    steps = []
    for i, tid in enumerate(token_ids[: len(positions)]):
        pos = positions[i] or {}
        best = sorted(pos.items(), key=lambda kv: kv[1].logprob, reverse=True)[:top_k]
        steps.append((tid, pos.get(tid), best))
    undecoded = sorted(
        {tid for tid, chosen, _ in steps if chosen is None or chosen.decoded_token is None}
        | {t for _, _, best in steps for t, e in best if e.decoded_token is None}
    )
    decoded = dict(zip(undecoded, decode(undecoded), strict=True)) if undecoded else {}

    def text(tid: int, entry: Any) -> str:
        if entry is not None and entry.decoded_token is not None:
            return str(entry.decoded_token)
        return decoded.get(tid, "")

    return tuple(
        TokenLogprob(
            token=text(tid, chosen),
            logprob=_clamp(chosen.logprob) if chosen is not None else _MIN_LOGPROB,
            top=tuple((text(t, e), _clamp(e.logprob)) for t, e in best),
        )
        for tid, chosen, best in steps
    )


def _clamp(logprob: float) -> float:
    return _MIN_LOGPROB if math.isnan(logprob) else max(float(logprob), _MIN_LOGPROB)


def make_beam_searcher(engine: Any) -> Any:
    """vLLM's online beam search (``BeamSearchOnlineMixin``), bound to ``engine``.

    In 0.26 beam search is not a method of ``AsyncLLM``; it is a serving-layer mixin
    that only needs an ``engine_client`` and a ``renderer``.
    """
    from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin

    class _BeamSearcher(BeamSearchOnlineMixin):
        def __init__(self, client: Any) -> None:
            self.engine_client = client
            self.renderer = client.renderer

    return _BeamSearcher(engine)


__all__ = [
    "FINISH_REASONS",
    "check_beam_params",
    "finish_reason",
    "invalid_request",
    "make_beam_searcher",
    "prompt_len",
    "token_logprobs",
    "vllm_sampling_params",
]

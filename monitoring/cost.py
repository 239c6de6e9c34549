"""Request cost in USD: token pricing or GPU-hour pricing apportioned by engine busy time.

Two pricing modes, chosen per model in config (the ``mode`` key picks one):

``TokenPricing`` (``mode: token``), for hosted APIs or internal price lists::

    cost = prompt_tokens / 1000 * prompt_usd_per_1k_tokens
         + completion_tokens / 1000 * completion_usd_per_1k_tokens

``GpuHourPricing`` (``mode: gpu_hour``), for self-hosted models, so they are never
recorded at $0. A replica costs ``usd_per_second = usd_per_gpu_hour * gpus_per_replica / 3600``
for every second its engine is busy (at least one request active). Each busy second is
split equally among the requests active during it, so a request pays::

    busy_share_seconds_i = ∫ over [start_i, end_i] of 1 / n(t) dt
    cost_i               = usd_per_second * busy_share_seconds_i

where ``n(t)`` is the number of requests active on the replica at time ``t``.
Consequences: a request alone on the replica pays all of its duration; the shares of
all requests add up to the replica's busy time; idle time (``n(t) = 0``) is charged to
nobody, so ``replica cost - attributed cost`` is the price of idle capacity.
:class:`EngineBusyMeter` computes ``busy_share_seconds`` for one replica.

This module is pure Python: it computes numbers, it records nothing. Callers add the
result to the cost counter in ``monitoring.metrics``.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CostInputError",
    "CostModel",
    "EngineBusyMeter",
    "GpuHourPricing",
    "Pricing",
    "TokenPricing",
]

SECONDS_PER_HOUR = 3600.0


class _StrictModel(BaseModel):
    # monitoring/ imports no other area, so it keeps its own copy of the strict base.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenPricing(_StrictModel):
    """Price per 1,000 prompt and completion tokens."""

    mode: Literal["token"] = Field("token", description="Selects token pricing.")
    prompt_usd_per_1k_tokens: float = Field(
        ..., ge=0, le=1_000, description="USD charged per 1,000 prompt (input) tokens."
    )
    completion_usd_per_1k_tokens: float = Field(
        ..., ge=0, le=1_000, description="USD charged per 1,000 completion (output) tokens."
    )

    @model_validator(mode="after")
    def _not_free(self) -> TokenPricing:
        # A zero price on both sides would silently record every request at $0;
        # a model without a price should simply have no pricing configured.
        if self.prompt_usd_per_1k_tokens == 0 and self.completion_usd_per_1k_tokens == 0:
            raise ValueError(
                "prompt_usd_per_1k_tokens and completion_usd_per_1k_tokens are both 0; "
                "set at least one price above 0, or configure no pricing for this model"
            )
        return self


class GpuHourPricing(_StrictModel):
    """Price per GPU-hour, apportioned to requests by their share of engine busy time."""

    mode: Literal["gpu_hour"] = Field("gpu_hour", description="Selects GPU-hour pricing.")
    usd_per_gpu_hour: float = Field(
        ..., gt=0, le=10_000, description="USD per hour of one GPU (on-demand or amortised price)."
    )
    gpus_per_replica: float = Field(
        1.0, gt=0, le=16, description="GPUs one replica holds (fractions allowed, as in num_gpus)."
    )

    @property
    def usd_per_second(self) -> float:
        """USD one replica costs per second of engine busy time."""
        return self.usd_per_gpu_hour * self.gpus_per_replica / SECONDS_PER_HOUR


Pricing = Annotated[TokenPricing | GpuHourPricing, Field(discriminator="mode")]
"""Either pricing mode; config selects one with ``mode: token`` or ``mode: gpu_hour``."""


class CostInputError(ValueError):
    """A cost input is missing or out of range; ``param`` names it, ``value`` is what was given."""

    def __init__(self, param: str, value: object, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.value = value


class CostModel:
    """Turns one request's usage into USD under one model's pricing."""

    def __init__(self, pricing: TokenPricing | GpuHourPricing) -> None:
        self.pricing = pricing

    @property
    def needs_busy_time(self) -> bool:
        """True when the caller must measure busy time with an :class:`EngineBusyMeter`."""
        return isinstance(self.pricing, GpuHourPricing)

    def cost_usd(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        busy_share_seconds: float | None = None,
    ) -> float:
        """USD for one request.

        Args:
            prompt_tokens: tokens in the prompt (used by token pricing).
            completion_tokens: tokens generated (used by token pricing).
            busy_share_seconds: the request's share of engine busy time, from
                :meth:`EngineBusyMeter.finish` (required by GPU-hour pricing).

        Raises:
            CostInputError: a count is negative, or GPU-hour pricing is configured and
                ``busy_share_seconds`` is missing (never silently $0).
        """
        _check_non_negative("prompt_tokens", prompt_tokens)
        _check_non_negative("completion_tokens", completion_tokens)
        pricing = self.pricing
        if isinstance(pricing, TokenPricing):
            return (
                prompt_tokens * pricing.prompt_usd_per_1k_tokens
                + completion_tokens * pricing.completion_usd_per_1k_tokens
            ) / 1000.0
        if busy_share_seconds is None:
            raise CostInputError(
                "busy_share_seconds",
                None,
                "busy_share_seconds is required with gpu_hour pricing; measure it with EngineBusyMeter",
            )
        _check_non_negative("busy_share_seconds", busy_share_seconds)
        return pricing.usd_per_second * busy_share_seconds


def _check_non_negative(param: str, value: float) -> None:
    if value < 0:
        raise CostInputError(param, value, f"{param} must be >= 0; got {value}")


class EngineBusyMeter:
    """Apportions one replica's engine busy time among its concurrent requests.

    Call :meth:`start` when the engine begins work on a request and :meth:`finish`
    when it is done (after the last token, on error or cancellation too); ``finish``
    returns the request's ``busy_share_seconds = ∫ 1/n(t) dt`` over its lifetime.

    It keeps one running integral ``S(t) = ∫ 1/n(u) du`` over busy time; a request's
    share is ``S(end) - S(start)``, so both calls are O(1) however many requests are
    active. Times are ``time.monotonic()`` seconds of this process; pass ``now`` only in
    tests. Thread-safe, so replicas that run engine work in threads may share one meter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None  # time of the last event
        self._share_integral = 0.0  # S(last)
        self._busy_seconds = 0.0  # time with n >= 1, up to last
        self._started: dict[str, float] = {}  # request id -> S(start)

    def _advance(self, now: float | None) -> float:
        t = time.monotonic() if now is None else now
        if self._last is not None:
            if t < self._last:
                raise CostInputError(
                    "now", t, f"time went backwards: now={t} is before the last event at {self._last}"
                )
            n = len(self._started)
            if n:
                dt = t - self._last
                self._share_integral += dt / n
                self._busy_seconds += dt
        self._last = t
        return t

    def start(self, request_id: str, now: float | None = None) -> None:
        """Marks ``request_id`` active from ``now`` (default: ``time.monotonic()``)."""
        with self._lock:
            if request_id in self._started:
                raise CostInputError("request_id", request_id, f"request {request_id!r} already started")
            self._advance(now)
            self._started[request_id] = self._share_integral

    def finish(self, request_id: str, now: float | None = None) -> float:
        """Marks ``request_id`` done at ``now``; returns its busy-share seconds."""
        with self._lock:
            if request_id not in self._started:
                raise CostInputError("request_id", request_id, f"request {request_id!r} was not started")
            self._advance(now)
            return self._share_integral - self._started.pop(request_id)

    def busy_seconds(self, now: float | None = None) -> float:
        """Seconds, up to ``now``, during which at least one request was active."""
        with self._lock:
            self._advance(now)
            return self._busy_seconds

    @property
    def active_requests(self) -> int:
        """Requests started and not yet finished."""
        return len(self._started)

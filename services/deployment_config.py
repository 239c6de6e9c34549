"""Per-deployment Ray Serve settings shared by every deployment's config.

One model, :class:`DeploymentSettings`, describes replicas, autoscaling and
resources; :meth:`DeploymentSettings.serve_options` turns it into the keyword
arguments of ``Deployment.options``. The Helm chart and the RayService's
``serveConfigV2`` are rendered from the same model.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def repeated(values: list[str]) -> list[str]:
    """The values that occur more than once, sorted (for uniqueness errors that name them)."""
    return sorted(v for v, n in Counter(values).items() if n > 1)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AutoscalingSettings(StrictModel):
    """Serve autoscaling: replicas follow the number of ongoing requests."""

    min_replicas: int = Field(1, ge=0, le=1024, description="Fewest replicas kept running.")
    max_replicas: int = Field(1, ge=1, le=1024, description="Most replicas autoscaling may start.")
    initial_replicas: int | None = Field(
        None, ge=0, le=1024, description="Replicas at start-up (default: min_replicas)."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=10_000, description="Ongoing requests per replica that autoscaling aims for."
    )
    allow_scale_to_zero: bool = Field(
        False,
        description="Must be true for min_replicas 0: the first request after idling then "
        "waits for a cold start (model load).",
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, le=3600, description="Seconds of high load before adding replicas."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, le=86_400, description="Seconds of low load before removing replicas."
    )

    @model_validator(mode="after")
    def _check(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        if self.min_replicas == 0 and not self.allow_scale_to_zero:
            raise ValueError(
                "min_replicas is 0 but allow_scale_to_zero is false; set it to true to allow scale to zero"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self


class DeploymentSettings(StrictModel):
    """Replicas, autoscaling and resources of one Serve deployment."""

    num_replicas: int = Field(
        1, ge=1, le=1024, description="Fixed replica count (ignored when autoscaling is set)."
    )
    autoscaling: AutoscalingSettings | None = Field(
        None, description="Autoscaling; when set it replaces num_replicas."
    )
    num_cpus: float = Field(0.5, ge=0, le=512, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, le=16, description="GPUs reserved per replica (fractions allowed).")
    max_ongoing_requests: int = Field(
        64, ge=1, le=100_000, description="Requests one replica accepts at once before Serve queues them."
    )
    max_queued_requests: int = Field(
        -1, ge=-1, le=1_000_000, description="Requests queued per caller before 503 (-1: unbounded)."
    )
    health_check_period_s: float = Field(10.0, gt=0, le=3600, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds before a health check fails."
    )

    def initial_replicas(self) -> int:
        """Replicas Serve starts with: ``num_replicas``, or autoscaling's initial or minimum count."""
        if self.autoscaling is None:
            return self.num_replicas
        a = self.autoscaling
        return a.initial_replicas if a.initial_replicas is not None else a.min_replicas

    def serve_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` of the deployment ``name``."""
        opts: dict[str, Any] = {
            "name": name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.autoscaling is None:
            opts["num_replicas"] = self.num_replicas
        else:
            a = self.autoscaling
            opts["autoscaling_config"] = {
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "initial_replicas": a.initial_replicas,
                "target_ongoing_requests": a.target_ongoing_requests,
                "upscale_delay_s": a.upscale_delay_s,
                "downscale_delay_s": a.downscale_delay_s,
            }
        return opts

"""Config of the usage ledger (``GET /v1/usage``)."""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from services.deployment_config import DeploymentSettings, StrictModel

MEMORY = ":memory:"


class UsageConfig(StrictModel):
    """Where usage is stored, how often gateways flush it and how long it is kept."""

    enabled: bool = Field(True, description="Record per-tenant usage and serve GET /v1/usage.")
    path: str | None = Field(
        None,
        min_length=1,
        description="SQLite file of the ledger (default: <data_dir>/usage.sqlite; ':memory:' for tests).",
    )
    flush_interval_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between a gateway replica's sends of its buffered usage."
    )
    retention_days: int = Field(
        90, ge=1, le=3650, description="Days of per-minute usage kept; older buckets are pruned."
    )
    deployment: DeploymentSettings = Field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.1, max_ongoing_requests=64),
        description="Replicas and resources of the usage deployment (exactly one replica).",
    )

    @model_validator(mode="after")
    def _one_replica(self) -> UsageConfig:
        # The ledger is one SQLite database owned by one replica: a second replica
        # would write its own file (or its own ':memory:' database) and queries would
        # see only part of the usage.
        d = self.deployment
        if d.autoscaling is not None and d.autoscaling.max_replicas != 1:
            raise ValueError(
                f"deployment.autoscaling.max_replicas must be 1 (got {d.autoscaling.max_replicas}): "
                "the usage ledger is one SQLite database served by one replica"
            )
        if d.autoscaling is None and d.num_replicas != 1:
            raise ValueError(
                f"deployment.num_replicas must be 1 (got {d.num_replicas}): "
                "the usage ledger is one SQLite database served by one replica"
            )
        return self

    def resolved_path(self, data_dir: str | None) -> str:
        """``path``, or ``<data_dir>/usage.sqlite`` when unset.

        Raises:
            ValueError: ``path`` is unset and no ``data_dir`` is given.
        """
        if self.path is not None:
            return self.path
        if not data_dir:
            raise ValueError("usage.path is unset and no data_dir was given to place usage.sqlite in")
        return os.path.join(data_dir, "usage.sqlite")

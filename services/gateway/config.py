"""Config of the gateway (HTTP ingress) and of API-key auth."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator

from services.deployment_config import DeploymentSettings, StrictModel
from services.local_ray import is_loopback

__all__ = ["ApiKey", "AuthConfig", "GatewayConfig", "hash_key", "is_loopback"]

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The sha256 hex digest under which an API key is stored (keys themselves never are)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(StrictModel):
    """One API key, stored as its sha256 digest, and the tenant it acts for."""

    tenant: str = Field(description="Tenant id (lower-case letters, digits, _ and -; at most 63).")
    sha256: str = Field(description="sha256 hex digest of the key (`llmops keys create` prints one).")
    name: str | None = Field(None, max_length=128, description="Label for people (which service holds it).")
    admin: bool = Field(
        False, description="May read every tenant's usage (GET /v1/usage?tenant=...); for operators."
    )

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        if not _TENANT.match(v):
            raise ValueError(f'Got "{v}" for tenant; use lower-case letters, digits, _ and - (at most 63)')
        return v

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lower-case hex characters (the digest, never the key itself)")
        return v


class AuthConfig(StrictModel):
    """Bearer API keys mapped to tenants."""

    enabled: bool = Field(
        False, description="Require a valid key. Must be true unless the gateway is bound to loopback."
    )
    keys: list[ApiKey] = Field(
        default_factory=list, description="Accepted keys (as digests) and their tenants."
    )
    anonymous_tenant: str = Field("local", description="Tenant of requests when auth is disabled.")

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[ApiKey]) -> list[ApiKey]:
        seen: set[str] = set()
        for i, k in enumerate(v):
            if k.sha256 in seen:
                raise ValueError(f"keys[{i}]: the same key digest is listed twice")
            seen.add(k.sha256)
        return v


class GatewayConfig(StrictModel):
    """The HTTP front door: where it listens and what it accepts."""

    host: str = Field(
        "127.0.0.1",
        description="Address the gateway's port listens on (the ingress: HAProxy or Serve's proxy); the "
        "only one of the platform's sockets that may leave loopback. Not loopback requires auth.enabled.",
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=1024**3, description="Largest request body accepted (413 above)."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="Longest a request may take end to end before it is cancelled."
    )
    retry_timeout_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="When the replica serving a request dies before the client got a byte, the request "
        "is retried once: this bounds the retry (its whole answer, or a stream's first chunk), which may "
        "wait for the deployment's restarted replica. 503 with Retry-After after that.",
    )
    startup_wait_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="While the deployments behind the gateway are still starting, a request waits this "
        "long for them, then gets 503 with Retry-After (never a connection held open).",
    )
    ingress: Literal["haproxy", "serve-proxy"] = Field(
        "haproxy",
        description="HTTP ingress in front of the gateway replicas: Ray Serve's HAProxy ingress "
        "(C load balancer; 2.5-6x lower latency here, see README) or Serve's Python proxy.",
    )
    throughput_optimized: bool = Field(
        True, description="Ray Serve's throughput-optimized mode (gRPC data plane between replicas)."
    )
    haproxy_stats_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of HAProxy's stats page, on Ray's node address (loopback by default); "
        "null: a free port chosen at start and written to the run record.",
    )
    haproxy_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of HAProxy's own Prometheus metrics, on Ray's node address; null: a free "
        "port chosen at start (run record).",
    )
    deployment: DeploymentSettings = Field(
        default_factory=lambda: DeploymentSettings(num_cpus=0.25, max_ongoing_requests=256),
        description="Replicas, autoscaling and resources of the gateway.",
    )

"""Start and stop the platform in this process: Ray (local or joined), Serve, the app.

``llmops up`` (:mod:`llmops.up`) adds the run record, the banner and signal
handling on top; tests and benchmarks call :func:`start_platform` and
:func:`stop_platform` directly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmops.config import LLMOpsConfig
from llmops.run_record import free_port, running_record

APP_NAME = "llmops"
logger = logging.getLogger("llmops")
#: how long Serve may drain on stop before Ray is stopped under it
SERVE_SHUTDOWN_TIMEOUT_S = 15.0


class StartError(RuntimeError):
    """The platform cannot start; the message says why and what to change."""


@dataclass(frozen=True)
class InternalPorts:
    """Ports of Ray's ingress that only this machine uses; free ones unless configured."""

    haproxy_stats: int
    haproxy_metrics: int
    fallback_proxy: int

    @classmethod
    def resolve(cls, cfg: LLMOpsConfig) -> InternalPorts:
        g = cfg.gateway
        return cls(
            haproxy_stats=g.haproxy_stats_port or free_port(),
            haproxy_metrics=g.haproxy_metrics_port or free_port(),
            fallback_proxy=free_port(),
        )


def gateway_url(cfg: LLMOpsConfig) -> str:
    """Where a client on this machine reaches the gateway."""
    host = cfg.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.gateway.port}"


def locate_platform(cfg: LLMOpsConfig) -> tuple[str, str]:
    """The URL of the platform for ``cfg``, and a line saying how it was found.

    The ``llmops up`` running on the config's data_dir (its run record) comes
    first, then the config's gateway address.
    """
    record = running_record(cfg.data_dir)
    if record is not None:
        return record.url, f"the platform running on {record.data_dir} (pid {record.pid})"
    return gateway_url(
        cfg
    ), f"no llmops up runs on {Path(cfg.data_dir).resolve()}; the config's gateway address"


def metrics_url(cfg: LLMOpsConfig) -> str | None:
    """The one local Prometheus scrape URL (Ray's metrics endpoint), when we start Ray."""
    if cfg.ray.address:
        return None  # the joined cluster's own metrics port
    return f"http://{cfg.ray.node_ip_address}:{cfg.monitoring.metrics.export_port}/metrics"


def ray_cpus(cfg: LLMOpsConfig) -> float:
    """Logical CPUs a local Ray schedules: ``ray.num_cpus``, else the machine's (at least 2)."""
    return cfg.ray.num_cpus or max(os.cpu_count() or 1, 2)


def placement_problems(cfg: LLMOpsConfig, resources: dict[str, float]) -> str | None:
    """Why the deployments cannot all start on ``resources`` (Ray's totals), or None.

    Serve waits forever for a replica it cannot place; this says so before it
    waits, naming each deployment that would be left over and what it lacks
    (deployments are placed in the order :func:`services.app.planned_deployments` lists).
    """
    from services.app import planned_deployments

    have = {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}
    left, need_total = dict(have), {"CPU": 0.0, "GPU": 0.0}
    rows, unplaced = [], []
    for name, path, d in planned_deployments(cfg.services()):
        n = d.initial_replicas()
        need = {"CPU": n * d.num_cpus, "GPU": n * d.num_gpus}
        need_total = {k: need_total[k] + need[k] for k in need}
        short = {k: need[k] - left[k] for k in need if need[k] > left[k] + 1e-9}
        if short:
            unplaced.append(f"{name} (lacks {', '.join(f'{v:g} {k}' for k, v in short.items())})")
        else:
            left = {k: left[k] - need[k] for k in left}
        gpu = f" + {d.num_gpus:g} GPU" if d.num_gpus else ""
        mark = "   <- cannot be placed" if short else ""
        rows.append(f"  {name:<34} {n} x {d.num_cpus:g} CPU{gpu}   ({path}){mark}")
    if not unplaced:
        return None
    return "\n".join(
        [
            f"the deployments cannot all be placed: at start they need {need_total['CPU']:g} CPU and "
            f"{need_total['GPU']:g} GPU; Ray has {have['CPU']:g} CPU (ray.num_cpus) and {have['GPU']:g} GPU. "
            f"Left without a replica: {'; '.join(unplaced)}",
            *rows,
            "fix: lower num_replicas / min_replicas or num_cpus in those `deployment:` blocks, or raise "
            f"ray.num_cpus (logical CPUs Ray may hand out; this machine has {os.cpu_count()} cores)",
        ]
    )


def _serve_environment(cfg: LLMOpsConfig, ports: InternalPorts) -> None:
    """What Serve's controller, HAProxy and replicas read from the environment (they inherit ours)."""
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if cfg.gateway.ingress == "haproxy" else "0"
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if cfg.gateway.throughput_optimized else "0"
    # Ray's fixed defaults (8404, 9101, 8500) would collide between two platforms on one machine
    os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(ports.haproxy_stats)
    os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(ports.haproxy_metrics)
    os.environ["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] = str(ports.fallback_proxy)
    # An ingress replica behind HAProxy keeps draining for 30 s by default so a load
    # balancer can route around it; on one machine that is shutting down as a whole
    # there is nothing to route to, so Ctrl-C need not wait that long.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ.setdefault("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "2")


def raise_interrupt(signum: int, _frame: object) -> None:
    """Signal handler: stop the way Ctrl-C does."""
    raise KeyboardInterrupt


def _start_ray(
    cfg: LLMOpsConfig, ports: InternalPorts, token_file: Path | None, handle_sigterm: bool
) -> None:
    import ray

    if cfg.ray.address:
        ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=False)
    else:
        _start_local(cfg, ports, token_file)
    if handle_sigterm:
        # after ray.init: Ray installs its own SIGTERM handler (dump and abort), which
        # would leave Serve undrained; SIGTERM now stops like Ctrl-C does
        signal.signal(signal.SIGTERM, raise_interrupt)


def _start_local(cfg: LLMOpsConfig, ports: InternalPorts, token_file: Path | None) -> None:
    import ray

    from services.local_ray import start_local_ray

    _serve_environment(cfg, ports)
    start_local_ray(
        node_ip=cfg.ray.node_ip_address,
        num_cpus=ray_cpus(cfg),
        num_gpus=cfg.ray.num_gpus,
        auth=cfg.ray.auth,
        token_file=token_file,
        # Ray's metrics endpoint: every replica's llmops_* and Serve metrics, one scrape URL
        _metrics_export_port=cfg.monitoring.metrics.export_port,
        include_dashboard=False,
        log_to_driver=False,
    )
    problem = placement_problems(cfg, ray.cluster_resources())
    if problem:
        ray.shutdown()
        raise StartError(problem)


def _deploy_failure() -> str | None:
    """Serve's own word when the app failed to deploy (a replica constructor raised, ...)."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    app = serve.status().applications.get(APP_NAME)
    if app is None or app.status != ApplicationStatus.DEPLOY_FAILED:
        return None
    broken = [f"{name}: {d.message}" for name, d in app.deployments.items() if d.message]
    return "; ".join(broken) or app.message or "deploy failed"


def wait_ready(url: str, timeout_s: float, failed: Callable[[], str | None] = lambda: None) -> None:
    """Poll ``/readyz`` until 200; raise :class:`StartError` on timeout or once ``failed()`` says why."""
    import httpx

    deadline, last, next_check = time.monotonic() + timeout_s, "no answer yet", 0.0
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 2.0
            why = failed()
            if why:
                raise StartError(f"the platform failed to start: {why}")
        time.sleep(0.5)
    raise StartError(f"the platform did not become ready in {timeout_s:.0f}s: {last}")


def start_platform(
    cfg: LLMOpsConfig,
    ready_timeout_s: float = 600.0,
    *,
    ports: InternalPorts | None = None,
    token_file: Path | None = None,
    handle_sigterm: bool = False,
    on_ray_started: Callable[[], None] | None = None,
) -> str:
    """Start Ray locally (or join ``cfg.ray.address``), deploy the app, wait until ready.

    Returns the gateway's URL. The caller owns shutdown (:func:`stop_platform`),
    also when this raises. ``token_file`` keeps the local cluster's Ray token (else
    it lives only in this process' environment); with ``handle_sigterm``, SIGTERM
    raises ``KeyboardInterrupt`` like Ctrl-C, so one shutdown path serves both.

    Raises:
        StartError: the deployments cannot be placed, a deployment failed, or the
            gateway was not ready in ``ready_timeout_s``.
    """
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    _start_ray(cfg, ports or InternalPorts.resolve(cfg), token_file, handle_sigterm)
    if on_ray_started is not None:
        on_ray_started()
    from ray import serve

    from services.app import build_app

    serve.start(
        http_options={
            "host": cfg.gateway.host,
            "port": cfg.gateway.port,
            "request_timeout_s": cfg.gateway.request_timeout_s,
        }
    )
    serve.run(build_app(cfg.services()), name=APP_NAME, route_prefix="/", blocking=False)
    url = gateway_url(cfg)
    wait_ready(url, ready_timeout_s, _deploy_failure)
    return url


def ray_session_dir() -> str | None:
    """This process' Ray session directory (``/tmp/ray/session_*``), once Ray is up."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return str(node.get_session_dir_path()) if node is not None else None


def stop_platform(serve_timeout_s: float = SERVE_SHUTDOWN_TIMEOUT_S) -> None:
    """Drain Serve (at most ``serve_timeout_s``), then stop the Ray processes we started."""
    import ray

    if not ray.is_initialized():
        return

    def drain() -> None:
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # Ray may already be going down; stopping it is what follows
            logger.warning("Serve did not shut down cleanly", exc_info=True)

    t = threading.Thread(target=drain, name="serve-shutdown", daemon=True)
    t.start()
    t.join(serve_timeout_s)
    if t.is_alive():
        logger.warning("Serve did not drain within %.0fs; stopping Ray under it", serve_timeout_s)
    ray.shutdown()

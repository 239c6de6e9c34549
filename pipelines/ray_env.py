"""Ray for the batch pipelines: join the cluster this process has, else start a local one.

The local cluster is loopback-only with token auth, like the platform's (see
``services.local_ray``); it ends with the command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.config import LLMOpsConfig

__all__ = ["ensure_ray", "quiet_ray_data"]


def ensure_ray(config: LLMOpsConfig) -> bool:
    """Join Ray if this process already has it, else start a quiet local cluster. True if started."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if config.ray.address:
        ray.init(address=config.ray.address, **kwargs)
        return True
    from services.local_ray import start_local_ray

    # loopback and token auth like the platform's cluster; the token lives only in this
    # process' environment (this cluster ends with the command)
    start_local_ray(
        node_ip=config.ray.node_ip_address,
        num_cpus=config.ray.num_cpus,
        num_gpus=config.ray.num_gpus,
        auth=config.ray.auth,
        serve_hardening=False,
        **kwargs,
    )
    return True


def quiet_ray_data() -> None:
    """No progress bars or console logs from Ray Data (the pipelines print their own)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the one progress bar
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data logs to its session file and to the console; keep the console to errors
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)

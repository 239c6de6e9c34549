"""Ray on one machine: every port on the node address, token auth on.

A one-machine platform needs no Ray port beyond loopback, and anyone who can
reach an unauthenticated Ray cluster can run code in it. Three pieces keep it
closed, each at the moment Ray needs it:

- :func:`prepare_environment` sets what Ray reads **at import time**
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without it Ray swaps a loopback node
  address for the machine's external one). ``llmops/__init__.py`` calls it, so
  every entry point (the CLI, pipelines, benchmarks, tests) runs it before
  anything imports ``ray``; :func:`check_environment` refuses to start a
  loopback cluster if Ray was imported too early.
- :func:`start_local_ray` starts a new cluster with token auth (a fresh token
  per run, in a 0600 file or only in the environment) and installs
  :func:`bind_internal` as Ray's ``worker_process_setup_hook``.
- :func:`bind_internal` runs in every Ray worker process of that cluster and
  binds what Ray 2.60 binds on all interfaces to the node address instead: each
  Serve replica's inter-deployment gRPC server (``[::]:0``), a replica's
  direct-ingress HTTP server (it follows the gateway's host), and the HAProxy
  ingress's stats and metrics frontends (``bind *:8404``, ``bind :9101`` in
  Ray's template). The HAProxy template also answers 503 with ``Retry-After``,
  instead of holding the connection, while no gateway replica is up.

Joining an existing cluster (``ray.address``, e.g. on Kubernetes) changes none
of this: that cluster's own network policy and auth apply.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger("llmops.ray")

#: the address that Ray's own servers bind to, for :func:`bind_internal` in the workers
BIND_HOST_ENV = "LLMOPS_RAY_BIND_HOST"
SETUP_HOOK = f"{__name__}.bind_internal"
RayAuth = Literal["token", "disabled"]

# Read by Ray at import: loopback stays loopback. The rest keep workers offline and quiet.
_IMPORT_TIME_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the environment Ray reads at import time (values already set are kept)."""
    env = os.environ if environ is None else environ
    for key, value in _IMPORT_TIME_ENV.items():
        env.setdefault(key, value)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_environment(node_ip: str) -> None:
    """Raise if Ray, imported already, would move a loopback node to an external address."""
    if "ray" not in sys.modules or not is_loopback(node_ip):
        return
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(
            "Ray was imported before its environment was set, so it would bind its ports to this "
            "machine's external address although ray.node_ip_address is loopback. Import llmops "
            "(or call services.local_ray.prepare_environment()) before anything imports ray, or set "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment."
        )


def _enable_token_auth(token_file: Path | None) -> None:
    """Token auth for the cluster this process starts (and every process it spawns)."""
    token = secrets.token_hex(32)
    if token_file is None:
        os.environ["RAY_AUTH_TOKEN"] = token
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    else:
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.unlink(missing_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
        os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_MODE"] = "token"


def _set_auth_mode(auth: RayAuth, token_file: Path | None) -> None:
    if auth == "token":
        _enable_token_auth(token_file)
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    if "ray._raylet" in sys.modules:
        # Ray caches its config (the auth mode among it) when it is imported, and the token
        # once read: refresh both, as Ray's own token set-up does (a second cluster in this
        # process, e.g. a test session, gets a new token)
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def start_local_ray(
    *,
    node_ip: str = "127.0.0.1",
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    auth: RayAuth = "token",
    token_file: Path | None = None,
    serve_hardening: bool = True,
    **init_kwargs: Any,
) -> None:
    """Start a new one-machine Ray cluster (``ray.init(address="local")``).

    Args:
        node_ip: address of every Ray server; loopback unless this machine is one of several.
        num_cpus, num_gpus: what Ray schedules (default: detected).
        auth: ``token`` (default) makes every Ray connection present a fresh random token.
        token_file: where to keep the token (mode 0600), for ``ray status`` and friends;
            without it the token lives only in this process' environment.
        serve_hardening: install :func:`bind_internal` in every worker (needed for Serve;
            a plain Ray Data job opens no other listening socket).
        init_kwargs: more ``ray.init`` arguments (``include_dashboard``, ...).

    Raises:
        RuntimeError: see :func:`check_environment`.
    """
    check_environment(node_ip)
    _set_auth_mode(auth, token_file)
    os.environ[BIND_HOST_ENV] = node_ip
    import ray

    if serve_hardening:
        init_kwargs["runtime_env"] = {
            **init_kwargs.get("runtime_env", {}),
            "worker_process_setup_hook": SETUP_HOOK,
        }
    init_kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=node_ip)
    ray.init(**init_kwargs)


# -- in every worker process ----------------------------------------------------------------------
#: (what Ray's HAProxy template says, what it says here); each must match exactly once
_UNAVAILABLE = json.dumps(
    {
        "error": {
            "message": "The gateway is not up yet (or is restarting); retry shortly.",
            "type": "service_unavailable",
            "param": None,
            "code": "service_unavailable",
        }
    }
).replace('"', '\\"')
_RETURN_503 = (
    f'http-request return status 503 content-type application/json hdr Retry-After 1 string "{_UNAVAILABLE}"'
)


def haproxy_template_edits(bind_host: str) -> list[tuple[str, str]]:
    """The edits :func:`bind_internal` makes to Ray's HAProxy config template."""
    host = f"[{bind_host}]" if ":" in bind_host else bind_host
    return [
        ("    bind :{{ config.metrics_port }}\n", f"    bind {host}:{{{{ config.metrics_port }}}}\n"),
        ("  bind *:{{ config.stats_port }}\n", f"  bind {host}:{{{{ config.stats_port }}}}\n"),
        # no backend (no gateway replica up): 503 at once, not a wait in the fallback proxy
        (
            "    # Static routing based on path prefixes in decreasing length then alphabetical order\n",
            "{%- for backend in backends %}\n"
            f"    {_RETURN_503} if is_{{{{ backend.name or 'unknown' }}}}"
            " !{ nbsrv({{ backend.name or 'unknown' }}) gt 0 }\n"
            "{%- endfor %}\n"
            "    # Static routing based on path prefixes in decreasing length then alphabetical order\n",
        ),
        (
            "    {%- if backend.fallback_server %}\n"
            "    # Fallback to head node's Serve proxy when no ingress replicas are available\n",
            "    {%- if backend.fallback_server and false %}\n"
            "    # llmops: no fallback to the Serve proxy (it would hold the request); 503 above\n",
        ),
        # before the app is deployed every path is unknown: not ready yet, not 404
        (
            "backend default_backend\n"
            "    http-request return status 404 content-type text/plain lf-string"
            " \"Path '%[path]' not found. Ping http://.../-/routes for available routes.\"\n",
            f"backend default_backend\n    {_RETURN_503}\n",
        ),
    ]


def patch_haproxy_template(template: str, bind_host: str) -> str:
    """Ray's HAProxy template with :func:`haproxy_template_edits` applied.

    Raises:
        RuntimeError: the template is not the one these edits were written for (a Ray
            upgrade): failing closed beats exposing the ports again.
    """
    for old, new in haproxy_template_edits(bind_host):
        if template.count(old) != 1:
            raise RuntimeError(
                "Ray's HAProxy template changed (Ray upgrade?): cannot bind its stats and metrics "
                f"frontends to {bind_host}; expected once: {old.strip()[:80]!r}"
            )
        template = template.replace(old, new)
    return template


def _internal_address(address: str, bind_host: str) -> str:
    host, sep, port = address.rpartition(":")
    if sep and host in ("[::]", "0.0.0.0", ""):
        return f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"
    return address


def bind_internal() -> None:
    """Ray ``worker_process_setup_hook``: bind Ray's all-interface servers to the node address.

    Runs once in each worker process of a cluster :func:`start_local_ray` started
    (the Serve controller, the HAProxy manager, every replica), before any actor
    code; see the module docstring for what it changes.
    """
    bind_host = os.environ.get(BIND_HOST_ENV)
    if not bind_host:
        return
    from ray._common import tls_utils
    from ray.serve._private import haproxy_templates

    original_add_port = tls_utils.add_port_to_grpc_server

    def add_port_to_grpc_server(server: Any, address: str) -> Any:
        return original_add_port(server, _internal_address(address, bind_host))

    tls_utils.add_port_to_grpc_server = add_port_to_grpc_server
    haproxy_templates.HAPROXY_CONFIG_TEMPLATE = patch_haproxy_template(
        haproxy_templates.HAPROXY_CONFIG_TEMPLATE, bind_host
    )
    # These modules import the names above directly: point them at the new ones.
    from ray.serve._private import haproxy, proxy, replica
    from ray.serve._private.constants import RAY_SERVE_FALLBACK_PROXY_HTTP_PORT

    haproxy.HAPROXY_CONFIG_TEMPLATE = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    replica.add_port_to_grpc_server = add_port_to_grpc_server
    # A replica's direct-ingress port is for the ingress on this machine; the fallback
    # proxy behind HAProxy gets no traffic here (see the template edits): neither is
    # public, even when the gateway's own address (HAProxy's or Serve's proxy's) is.
    replica.start_asgi_http_server = _internal_http(
        replica.start_asgi_http_server,
        bind_host,
        lambda port: True,
    )
    proxy.start_asgi_http_server = _internal_http(
        proxy.start_asgi_http_server,
        bind_host,
        lambda port: port == RAY_SERVE_FALLBACK_PROXY_HTTP_PORT,
    )


def _internal_http(start: Any, bind_host: str, internal: Any) -> Any:
    """``start_asgi_http_server`` that binds ``bind_host`` when ``internal(port)``."""

    async def start_asgi_http_server(app: Any, http_options: Any, **kwargs: Any) -> Any:
        if internal(http_options.port):
            http_options = http_options.model_copy(update={"host": bind_host})
        return await start(app, http_options, **kwargs)

    return start_asgi_http_server

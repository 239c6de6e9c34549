"""The ``llmops`` command: start the platform, check configs, talk to it."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from llmops.config import ConfigError, LLMOpsConfig, load_config, validate_config

DEFAULT_URL = "http://127.0.0.1:8000"
APP_NAME = "llmops"


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


# -- llmops up -------------------------------------------------------------------------
def _wait_ready(url: str, timeout_s: float) -> tuple[bool, str]:
    import httpx

    deadline, last = time.monotonic() + timeout_s, "no answer yet"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return True, r.text
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    return False, last


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def start_platform(cfg: LLMOpsConfig, ready_timeout_s: float = 600.0, handle_sigterm: bool = False) -> str:
    """Start Ray locally (or join ``cfg.ray.address``), deploy the app, wait until ready.

    Returns the base URL. The caller owns shutdown (:func:`stop_platform`). With
    ``handle_sigterm``, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C does, so
    one shutdown path serves both.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import ray
    from ray import serve

    from services.app import build_app

    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.ray.address:
        init_kwargs["address"] = cfg.ray.address
    else:
        # read by Serve when it starts, so only for a cluster we start ourselves
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if cfg.gateway.ingress == "haproxy" else "0"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if cfg.gateway.throughput_optimized else "0"
        # An ingress replica behind HAProxy keeps draining for 30 s by default so a
        # load balancer can route around it; on one machine that is shutting down
        # as a whole there is nothing to route to, so Ctrl-C need not wait that long.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
        os.environ.setdefault("RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S", "2")
        if _loopback(cfg.ray.node_ip_address):
            # Ray binds its gRPC servers to the node IP; on Linux it swaps a loopback
            # node IP for the machine's external one unless this is off. Off keeps
            # every Ray port on 127.0.0.1 (a one-machine cluster needs no other).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        init_kwargs.update(
            address="local",  # always a new single-machine cluster, never someone else's
            num_cpus=cfg.ray.num_cpus or max(os.cpu_count() or 1, 2),
            num_gpus=cfg.ray.num_gpus,
            _node_ip_address=cfg.ray.node_ip_address,
            # Ray's metrics endpoint: every replica's llmops_* and Serve metrics, one scrape URL
            _metrics_export_port=cfg.monitoring.metrics.export_port,
        )
    ray.init(**init_kwargs)
    if handle_sigterm:
        # after ray.init: Ray installs its own SIGTERM handler (dump and abort), which
        # would leave Serve undrained
        signal.signal(signal.SIGTERM, _raise_interrupt)
    serve.start(
        http_options={
            "host": cfg.gateway.host,
            "port": cfg.gateway.port,
            "request_timeout_s": cfg.gateway.request_timeout_s,
        }
    )
    serve.run(build_app(cfg.services()), name=APP_NAME, route_prefix="/", blocking=False)
    host = "127.0.0.1" if cfg.gateway.host in ("0.0.0.0", "::") else cfg.gateway.host
    url = f"http://{host}:{cfg.gateway.port}"
    ok, detail = _wait_ready(url, ready_timeout_s)
    if not ok:
        stop_platform()
        raise RuntimeError(f"the platform did not become ready in {ready_timeout_s:.0f}s: {detail}")
    return url


def metrics_url(cfg: LLMOpsConfig) -> str | None:
    """The one local Prometheus scrape URL (Ray's metrics endpoint), when we start Ray."""
    if cfg.ray.address:
        return None  # the joined cluster's own metrics port
    return f"http://{cfg.ray.node_ip_address}:{cfg.monitoring.metrics.export_port}/metrics"


def _loopback(host: str) -> bool:
    from services.gateway.config import is_loopback

    return is_loopback(host)


def stop_platform() -> None:
    """Shut Serve down and stop the Ray processes this process started."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def seed_sample_corpus(cfg: LLMOpsConfig, url: str) -> str | None:
    """Load the SQuAD sample paragraphs into the first collection if it is empty.

    Goes through the running platform's API, so the documents get the same
    validation, chunking and ids as any online write. Returns a line for the
    banner, or None when there is nothing to do.
    """
    import httpx

    from evals.datasets import sample_corpus

    if not (cfg.retrieval.enabled and cfg.retrieval.collections):
        return None
    name = cfg.retrieval.collections[0].name
    headers = (
        {"Authorization": f"Bearer {os.environ['LLMOPS_API_KEY']}"}
        if os.environ.get("LLMOPS_API_KEY")
        else {}
    )
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        cols = http.get("/v1/collections")
        cols.raise_for_status()
        points = {c["name"]: c["points"] for c in cols.json()["data"]}
        if points.get(name):
            return f"  sample corpus   collection '{name}' already holds {points[name]} chunks"
        docs = sample_corpus()
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(f"loading the sample corpus into '{name}'", total=len(docs))
            for i in range(0, len(docs), 64):
                batch = [
                    {"id": d.doc_id, "text": d.text, "metadata": d.metadata, "source": d.source}
                    for d in docs[i : i + 64]
                ]
                http.post(f"/v1/collections/{name}/documents", json={"documents": batch}).raise_for_status()
                progress.advance(task, len(batch))
    return f"  sample corpus   {len(docs)} SQuAD 2.0 paragraphs (CC BY-SA 4.0) loaded into '{name}'"


def banner(cfg: LLMOpsConfig, url: str, extra: list[str] | None = None) -> str:
    chat = [m.name for m in cfg.models] + [r.name for r in cfg.rag]
    emb = [e.name for e in cfg.embeddings]
    auth = (
        f"ON ({len(cfg.auth.keys)} key(s))"
        if cfg.auth.enabled
        else f"OFF — allowed only because the gateway is bound to loopback ({cfg.gateway.host})"
    )
    key = "Authorization: Bearer $LLMOPS_API_KEY" if cfg.auth.enabled else ""
    curl_auth = f' -H "{key}"' if key else ""
    if cfg.rag:  # ask the RAG model something the sample corpus answers
        body = json.dumps(
            {
                "model": cfg.rag[0].name,
                "messages": [{"role": "user", "content": "Who was the leader of the Normans?"}],
            }
        )
    else:
        body = json.dumps(
            {"model": chat[0] if chat else "", "messages": [{"role": "user", "content": "Hello!"}]}
        )
    lines = [
        "llmops is ready",
        f"  OpenAI API      {url}/v1   (chat/completions, completions, embeddings, models)",
        f"  health          {url}/healthz   readiness {url}/readyz",
        f"  chat models     {', '.join(chat) or '-'}",
        f"  embedding       {', '.join(emb) or '-'}",
        f"  auth            {auth}",
        f"  data            {Path(cfg.data_dir).resolve()}",
        *_monitoring_lines(cfg, url),
        *(extra or []),
        "",
        "Try:",
        f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{curl_auth} \\",
        f"       -d '{body}'",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _monitoring_lines(cfg: LLMOpsConfig, url: str) -> list[str]:
    mon = cfg.services().monitoring
    scrape = metrics_url(cfg)
    lines = []
    if mon.metrics.enabled and scrape:
        lines.append(f"  metrics         {scrape}   (Prometheus scrape URL; names start ray_llmops_)")
    if mon.request_log.enabled:
        lines.append(f"  request log     {mon.request_log.path}")
    if cfg.usage.enabled:
        lines.append(f"  usage           {url}/v1/usage?since=2026-01-01T00:00:00Z")
    if mon.tracing.enabled:
        lines.append(f"  tracing         OTLP → {mon.tracing.otlp_endpoint or '(no endpoint: ids only)'}")
    return lines


def _start_prometheus(cfg: LLMOpsConfig) -> tuple[Any, str]:
    """Start the local Prometheus; returns it (or None) and a banner line."""
    from llmops.local_prometheus import LocalPrometheus, PrometheusNotInstalledError

    prom = LocalPrometheus(cfg.monitoring, cfg.data_dir)
    try:
        prom_url = prom.start()
    except PrometheusNotInstalledError as exc:
        return None, f"  prometheus      not started: {exc}"
    except RuntimeError as exc:
        return None, f"  prometheus      not started: {exc}"
    return prom, f"  prometheus      {prom_url}   (alert rules: {prom.rules_file})"


def cmd_up(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if overrides:
        data = cfg.model_dump()
        data["gateway"].update(overrides)
        try:
            cfg = validate_config(data, "command line")
        except ConfigError as exc:
            _print_err(str(exc))
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    prometheus = None
    try:
        print(f"starting llmops on {cfg.gateway.host}:{cfg.gateway.port} ...", flush=True)
        url = start_platform(cfg, args.ready_timeout, handle_sigterm=True)
        extra = []
        if args.with_prometheus:
            prometheus, line = _start_prometheus(cfg)
            extra.append(line)
        if args.sample_corpus:
            seeded = seed_sample_corpus(cfg, url)
            if seeded:
                extra.append(seeded)
        if cfg.retrieval.enabled:
            store = cfg.services().retrieval.vector_store
            extra.append(f"  vector store    {store.url or 'embedded Qdrant at ' + str(store.path)}")
        print(banner(cfg, url, extra), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nshutting down ...", flush=True)
    except RuntimeError as exc:
        _print_err(f"error: {exc}")
        return 1
    finally:
        # ignore further Ctrl-C while Ray stops, so no process is left behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if prometheus is not None:
            prometheus.stop()
        stop_platform()
    print("stopped.", flush=True)
    return 0


# -- llmops config ---------------------------------------------------------------------
def _load(args: argparse.Namespace) -> LLMOpsConfig | None:
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        _print_err(str(exc))
        return None


def cmd_config_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        _print_err(str(exc))
        return 1
    print(f"{args.file}: OK ({len(cfg.models)} model(s), {len(cfg.embeddings)} embedding model(s))")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    cfg = _load(args)
    if cfg is None:
        return 1
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


# -- llmops keys -----------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace) -> int:
    from services.gateway.config import ApiKey, hash_key

    key = "sk-llmops-" + secrets.token_urlsafe(32)
    entry = ApiKey(tenant=args.tenant, sha256=hash_key(key), name=args.name)
    print(f"API key (shown once; store it in a secret manager): {key}")
    print("Add to the config under auth.keys:")
    print(
        f"  - {{tenant: {entry.tenant}, sha256: {entry.sha256}"
        + (f", name: {args.name}" if args.name else "")
        + "}"
    )
    return 0


# -- client commands -------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from openai import OpenAI

    key = args.api_key or os.environ.get("LLMOPS_API_KEY") or "not-needed"
    return OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=args.timeout)


def _client_errors() -> tuple[type[BaseException], ...]:
    import openai

    return (openai.APIError,)


def cmd_models(args: argparse.Namespace) -> int:
    try:
        models = _client(args).models.list()
    except _client_errors() as exc:
        _print_err(f"error: {exc}")
        return 1
    print(f"{'MODEL':<32} {'KIND':<10} {'ENGINE':<22} CONTEXT")
    for m in models.data:
        extra = m.model_extra or {}
        print(
            f"{m.id:<32} {extra.get('kind', '?'):<10} {extra.get('engine', '?'):<22} {extra.get('context_length', '?')}"
        )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client(args)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.message})
    try:
        model = args.model or next(
            m.id for m in client.models.list().data if (m.model_extra or {}).get("kind") == "chat"
        )
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if args.max_tokens:
            kwargs["max_tokens"] = args.max_tokens
        if args.no_stream:
            resp = client.chat.completions.create(**kwargs)
            print(resp.choices[0].message.content)
            return 0
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
    except StopIteration:
        _print_err("error: the server has no chat model")
        return 1
    except _client_errors() as exc:
        _print_err(f"error: {exc}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmops", description="LLMOps serving and monitoring platform.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Ray, deploy the platform, serve until Ctrl-C/SIGTERM")
    up.add_argument(
        "--config", help="YAML config (default: $LLMOPS_CONFIG, ./llmops.yaml, built-in local defaults)"
    )
    up.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    up.add_argument("--port", type=int, help="HTTP port (default from config: 8000)")
    up.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness (600)")
    up.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also start a local Prometheus (Debian's `prometheus`) scraping the platform, "
        "with the alert rules loaded; prints its URL",
    )
    up.add_argument(
        "--sample-corpus",
        action="store_true",
        help="load the SQuAD sample paragraphs into the first collection when it is empty",
    )
    up.set_defaults(func=cmd_up)

    cfg = sub.add_parser("config", help="check or show a config")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    v = cfg_sub.add_parser("validate", help="validate FILE; print each error with its path and bad value")
    v.add_argument("file")
    v.set_defaults(func=cmd_config_validate)
    s = cfg_sub.add_parser("show", help="print the effective config (file + LLMOPS_ env overrides)")
    s.add_argument("--config")
    s.set_defaults(func=cmd_config_show)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kc = keys_sub.add_parser("create", help="make a new key; prints it once with the digest for the config")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--name")
    kc.set_defaults(func=cmd_keys_create)

    from evals.cli import add_parser as add_eval
    from pipelines.ingest.cli import add_parser as add_ingest

    add_ingest(sub, load_config)
    add_eval(sub, load_config=load_config)

    for name, helptext, func in (
        ("models", "list the models the server offers", cmd_models),
        ("chat", "send one chat message and stream the answer", cmd_chat),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument(
            "--url", default=os.environ.get("LLMOPS_URL", DEFAULT_URL), help=f"server (default {DEFAULT_URL})"
        )
        c.add_argument("--api-key", help="API key (default: $LLMOPS_API_KEY)")
        c.add_argument("--timeout", type=float, default=120.0)
        c.set_defaults(func=func)
        if name == "chat":
            c.add_argument("message")
            c.add_argument("--model", help="default: the first chat model")
            c.add_argument("--system", help="system message (e.g. context to answer from)")
            c.add_argument("--max-tokens", type=int)
            c.add_argument("--no-stream", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

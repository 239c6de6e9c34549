"""``llmops up``: serve until Ctrl-C or SIGTERM, and leave nothing behind.

One run per ``data_dir`` (a lock under ``<data_dir>/run``). A run that was
killed (SIGKILL, the OOM killer) left Ray's processes and HAProxy running: the
next ``llmops up`` on that data_dir finds them by the run id in their
environment and stops them before it starts. Ports already taken by someone
else are named with their holder before anything starts. Stopping drains Serve
for at most 15 s, stops Ray, then stops whatever of the run still lives; a
detached reaper (:mod:`llmops.reaper`) makes sure of it even if Ray blocks the
stop, so a stop ends within 25 s even right after heavy load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmops.config import LLMOpsConfig
from llmops.console import Console
from llmops.platform import (
    InternalPorts,
    StartError,
    gateway_url,
    metrics_url,
    raise_interrupt,
    ray_session_dir,
    start_platform,
    stop_platform,
)
from llmops.run_record import (
    RUN_ID_ENV,
    RunLock,
    RunRecord,
    busy_ports,
    leftover_processes,
    read_record,
    run_dir,
    stop_processes,
)

CLEANUP_S = 10.0  # how long the leftovers of a killed run (and their ports) may take to go


def _clean_previous(cfg: LLMOpsConfig, console: Console) -> tuple[bool, str | None]:
    """Stop what a dead run on this data_dir left behind: (whether there was any, an error
    message if something survived)."""
    previous = read_record(cfg.data_dir)
    if previous is None:
        return False, None
    left = leftover_processes(previous.run_id, previous.ray_session_dir)
    if not left:
        return False, None
    console.event(
        "cleanup",
        f"the previous run on this data_dir (pid {previous.pid}) ended without stopping; "
        f"stopping what it left behind: {', '.join(map(str, left))}",
        "warning",
        previous_pid=previous.pid,
        processes=[p.pid for p in left],
    )
    # Ray's processes also wind down by themselves once their driver is gone: sweep until none is left
    end = time.monotonic() + CLEANUP_S
    while left and time.monotonic() < end:
        stop_processes(left, grace_s=3.0)
        left = leftover_processes(previous.run_id, previous.ray_session_dir)
    if previous.ray_token_file:
        Path(previous.ray_token_file).unlink(missing_ok=True)
    if left:
        return (
            True,
            f"could not stop {', '.join(map(str, left))}, left by the previous run; stop them by hand",
        )
    return True, None


def _wanted_ports(
    cfg: LLMOpsConfig, ports: InternalPorts, with_prometheus: bool
) -> dict[str, tuple[str, int]]:
    node = cfg.ray.node_ip_address
    wanted = {"gateway.port": (cfg.gateway.host, cfg.gateway.port)}
    if not cfg.ray.address:
        wanted["monitoring.metrics.export_port"] = (node, cfg.monitoring.metrics.export_port)
        if cfg.gateway.ingress == "haproxy":
            wanted["gateway.haproxy_stats_port"] = (node, ports.haproxy_stats)
            wanted["gateway.haproxy_metrics_port"] = (node, ports.haproxy_metrics)
    if with_prometheus:
        wanted["monitoring.prometheus.port"] = (
            cfg.monitoring.prometheus.host,
            cfg.monitoring.prometheus.port,
        )
        wanted["monitoring.pushgateway.port"] = (
            cfg.monitoring.pushgateway.host,
            cfg.monitoring.pushgateway.port,
        )
    return wanted


def cmd_up(cfg: LLMOpsConfig, args: argparse.Namespace) -> int:
    """Run ``llmops up`` on ``cfg``; returns the exit code."""
    console = Console(args.log_format)
    console.route_logging()
    lock = RunLock(cfg.data_dir)
    if not lock.acquire():
        holder = read_record(cfg.data_dir)
        who = f"pid {holder.pid}, serving {holder.url}" if holder else "its record is not written yet"
        console.error(
            f"llmops up is already running on data_dir {Path(cfg.data_dir).resolve()} ({who}); stop it "
            "first (Ctrl-C in its terminal, or kill -INT <pid>), or give this one another data_dir",
            event="already_running",
            pid=holder.pid if holder else None,
        )
        return 1
    signal.signal(signal.SIGTERM, raise_interrupt)
    # A shell starts `cmd &` with SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # `kill -INT` (what the messages here tell people to send) would do nothing. Catch it always.
    signal.signal(signal.SIGINT, raise_interrupt)
    record: RunRecord | None = None
    local_monitoring: list[Any] = []  # the Pushgateway and Prometheus, in start order
    rc = 0
    try:
        cleaned, problem = _clean_previous(cfg, console)
        ports = InternalPorts.resolve(cfg)
        wanted = _wanted_ports(cfg, ports, args.with_prometheus)
        busy = busy_ports(wanted)
        end = time.monotonic() + (CLEANUP_S if cleaned else 0.0)
        while busy and time.monotonic() < end:  # a process that just exited may still hold its port
            time.sleep(0.5)
            busy = busy_ports(wanted)
        if problem or busy:
            console.error("; ".join([*([problem] if problem else []), *busy]), event="ports_in_use")
            return 1
        if not migrate_embedded(cfg, console):
            return 1
        url = gateway_url(cfg)
        record = RunRecord.new(
            cfg.data_dir,
            url,
            {
                "gateway": cfg.gateway.port,
                "metrics": cfg.monitoring.metrics.export_port,
                "haproxy_stats": ports.haproxy_stats,
                "haproxy_metrics": ports.haproxy_metrics,
                "fallback_proxy": ports.fallback_proxy,
            },
        )
        token_file = (
            run_dir(cfg.data_dir) / "ray-token" if not cfg.ray.address and cfg.ray.auth == "token" else None
        )
        record.ray_token_file = str(token_file) if token_file else None
        os.environ[RUN_ID_ENV] = record.run_id  # inherited by every process this run starts
        record.write()
        console.event(
            "starting",
            f"starting llmops on {cfg.gateway.host}:{cfg.gateway.port} ...",
            host=cfg.gateway.host,
            port=cfg.gateway.port,
            data_dir=record.data_dir,
        )
        started = time.monotonic()

        def ray_started() -> None:  # so that a run killed from here on is found by its session too
            record.ray_session_dir = ray_session_dir()
            record.write()

        start_platform(
            cfg,
            args.ready_timeout,
            ports=ports,
            token_file=token_file,
            handle_sigterm=True,
            on_ray_started=ray_started,
        )
        extra = []
        if args.with_prometheus:
            local_monitoring, lines = _start_prometheus(cfg)
            extra.extend(lines)
        if args.sample_corpus:
            seeded = seed_sample_corpus(cfg, url)
            if seeded:
                extra.append(seeded)
        if cfg.retrieval.enabled:
            store = cfg.services().retrieval.vector_store
            extra.append(f"  vector store    {store.url or 'embedded Qdrant at ' + str(store.path)}")
        record.status = "ready"
        record.write()
        console.event(
            "ready",
            banner(cfg, url, extra),
            url=url,
            metrics_url=metrics_url(cfg),
            models=[m.name for m in cfg.models] + [r.name for r in cfg.rag],
            embeddings=[e.name for e in cfg.embeddings],
            data_dir=record.data_dir,
            startup_s=round(time.monotonic() - started, 1),
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.event("stopping", "\nshutting down ...")
    except StartError as exc:
        console.error(str(exc), event="start_failed")
        rc = 1
    finally:
        # ignore further Ctrl-C while stopping, so no process is left behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if record is not None:
            _stop(record, local_monitoring, console)
        lock.release()
    return rc


#: a stop ends within this, whatever Ray does (llmops.reaper enforces it)
STOP_DEADLINE_S = 25.0


def _start_reaper(record: RunRecord) -> None:
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}  # not a process of the run itself
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmops.reaper",
            record.run_id,
            str(record.pid),
            str(STOP_DEADLINE_S),
            record.ray_session_dir or "",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a second Ctrl-C to our process group must not stop it
    )


def _stop(record: RunRecord, local_monitoring: list[Any], console: Console) -> None:
    t0 = time.monotonic()
    record.status = "stopping"
    record.write()
    _start_reaper(record)
    for process in reversed(local_monitoring):  # Prometheus, then the Pushgateway it scrapes
        process.stop()
    stop_platform()
    left = leftover_processes(record.run_id, record.ray_session_dir)
    if left:  # Ray did not take them down with it (HAProxy, a stuck worker)
        console.event("cleanup", f"stopping what Ray left running: {', '.join(map(str, left))}", "warning")
        stop_processes(left, grace_s=3.0)
    if record.ray_token_file:
        Path(record.ray_token_file).unlink(missing_ok=True)
    console.event("stopped", "stopped.", stop_s=round(time.monotonic() - t0, 1))


# -- what the banner says -------------------------------------------------------------------------
def migrate_embedded(cfg: LLMOpsConfig, console: Console) -> bool:
    """Copy old-format embedded collections into Qdrant Edge before starting; False if that failed."""
    from services.retrieval.store import open_store
    from services.retrieval.store.legacy import migrate, unmigrated

    vs = cfg.retrieval.vector_store
    root = os.path.abspath(os.path.expanduser(vs.path or os.path.join(cfg.data_dir, "qdrant")))
    if not cfg.retrieval.enabled or vs.url or not unmigrated(root):
        return True
    console.event("migrating", f"migrating {', '.join(unmigrated(root))} into the Qdrant Edge engine ...")
    try:
        with open_store(vs, cfg.data_dir, allow_legacy=True) as store:
            copied = migrate(store, {c.name: c for c in cfg.retrieval.collections})  # type: ignore[arg-type]
    except Exception as exc:  # a half-copied collection is re-copied next time (ids are kept)
        console.error(
            f"migrating the embedded store failed: {exc}; `llmops ingest --migrate` retries",
            event="migration_failed",
        )
        return False
    for name, n in copied.items():
        console.event(
            "migrated",
            f"  migrated        {name}: {n:,} points (nothing re-embedded)",
            collection=name,
            points=n,
        )
    return True


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


def _start_prometheus(cfg: LLMOpsConfig) -> tuple[list[Any], list[str]]:
    """Start the Pushgateway and the local Prometheus scraping it and the platform.

    Returns what started (stop it in reverse order) and the banner lines. Either may fail
    to start (not installed, say) without stopping the platform: its line says why.
    """
    from llmops.local_prometheus import LocalPrometheus, LocalPushgateway

    started: list[Any] = []
    mon = cfg.monitoring
    pushgateway, scraped = LocalPushgateway(mon, cfg.data_dir), None
    try:
        pushgateway.start()
        started.append(pushgateway)
        scraped = pushgateway.address
        push_line = (
            f"  pushgateway     {pushgateway.url}   (continuous-eval metrics, job {mon.pushgateway.job})"
        )
    except RuntimeError as exc:  # PushgatewayNotInstalledError is one
        push_line = f"  pushgateway     not started: {exc}"
    prom = LocalPrometheus(mon, cfg.data_dir, pushgateway=scraped)
    try:
        prom_url = prom.start()
        started.append(prom)
        prom_line = f"  prometheus      {prom_url}   (alert rules: {prom.rules_file})"
    except RuntimeError as exc:  # PrometheusNotInstalledError is one
        prom_line = f"  prometheus      not started: {exc}"
    return started, [prom_line, push_line]

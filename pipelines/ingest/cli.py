"""``llmops ingest``: load files into a collection, or delete one document.

Writes straight to the configured vector store. The embedded (local) store
admits one process, so while ``llmops up`` holds it the command submits the
documents through the running platform's HTTP API instead
(``POST /v1/collections/{name}/documents``), after reading and validating them
here; ``--url`` asks for that path explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipelines.ingest.sources import RowFields

if TYPE_CHECKING:
    from rich.console import Console

    from llmops.config import LLMOpsConfig
    from pipelines.ingest.pipeline import IngestSummary
    from services.retrieval.types import Document

HTTP_BATCH = 64


def add_parser(
    subparsers: Any,
    load_config: Callable[[str | None], LLMOpsConfig],
    locate_platform: Callable[[LLMOpsConfig], tuple[str, str]] | None = None,
) -> argparse.ArgumentParser:
    """Add ``ingest`` to an ``argparse`` subparsers object; returns its parser.

    ``load_config`` turns ``--config`` into the root config, and ``locate_platform``
    finds the running platform's URL for it (and says how): both passed in by the
    ``llmops`` CLI, because areas never import ``llmops`` (DESIGN.md layers).
    """
    p = subparsers.add_parser(
        "ingest",
        help="load a directory, glob or file (.txt .md .html .jsonl .csv .parquet) into a collection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="directory (recursive), glob or file")
    p.add_argument("--collection", help="target collection (default: the only configured one)")
    p.add_argument("--tenant", default="local", help="tenant that owns the documents (default: local)")
    p.add_argument("--delete", metavar="DOC_ID", help="delete this document instead of ingesting")
    p.add_argument("--config", help="YAML config (default: $LLMOPS_CONFIG, ./llmops.yaml, built-in defaults)")
    p.add_argument("--id-field", default="id", help="row formats: field with the document id (default: id)")
    p.add_argument("--text-field", default="text", help="row formats: field with the text (default: text)")
    p.add_argument(
        "--metadata-fields", help="row formats: comma-separated metadata fields (default: all other fields)"
    )
    p.add_argument(
        "--migrate",
        action="store_true",
        help="copy collections of the old embedded format (qdrant-client local mode) into the Qdrant Edge "
        "engine, re-embedding nothing; then ingest PATH if given",
    )
    p.add_argument("--url", help="submit to the platform at this URL instead of writing to the store")
    p.add_argument("--api-key", help="API key for --url (default: $LLMOPS_API_KEY)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest, load_config=load_config, locate_platform=locate_platform)
    return p


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run ``llmops ingest``; returns the exit code."""
    from rich.console import Console

    from pipelines.ingest.pipeline import collection_config, open_store, run
    from services.retrieval.store import MigrationRequiredError, StoreLockedError

    # soft wrap: messages are paths and ids, never cut them; errors carry no markup
    console = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)
    if not args.path and not args.delete and not args.migrate:
        err.print("error: give a PATH to ingest, --delete DOC_ID, or --migrate")
        return 2
    try:
        cfg = args.load_config(args.config)
        coll = collection_config(cfg, args.collection)
    except ValueError as exc:  # ConfigError is a ValueError
        err.print(f"error: {exc}")
        return 2
    fields = RowFields(
        args.id_field,
        args.text_field,
        tuple(f.strip() for f in args.metadata_fields.split(",") if f.strip())
        if args.metadata_fields
        else None,
    )
    if args.url:
        return _remote(args, cfg, coll.name, args.url, fields, console, err, "")
    try:
        store = open_store(cfg, allow_legacy=args.migrate)
    except MigrationRequiredError as exc:
        err.print(f"error: {exc}")
        return 2
    except StoreLockedError as exc:
        url, how = (
            args.locate_platform(cfg)
            if args.locate_platform
            else (default_url(cfg), "the config's gateway address")
        )
        err.print(f"{exc}\n→ submitting through {how} at {url} instead")
        return _remote(args, cfg, coll.name, url, fields, console, err, f" (its {store_label(cfg)})")
    with store:
        if args.migrate:
            copied = migrate_store(store, cfg, console)
            if not args.path and not args.delete:
                return 0 if copied is not None else 2
        if args.delete:
            n = (
                store.delete_doc(coll.name, args.tenant, args.delete)
                if store.collection_exists(coll.name)
                else 0
            )
            if not n:
                err.print(
                    f"no document {args.delete!r} of tenant {args.tenant!r} in {coll.name} ({store.describe()})"
                )
                return 1
            console.print(
                f"deleted {n} chunk(s) of {args.delete!r} from {coll.name}; wrote to: {store.describe()}",
                markup=False,
            )
            return 0
        try:
            summary = run(
                cfg, args.path, coll.name, args.tenant, fields, store=store, progress=not args.no_progress
            )
        except (FileNotFoundError, ValueError) as exc:
            err.print(f"error: {exc}")
            return 2
    print_summary(summary, console, args.json)
    return 0


def migrate_store(store: Any, cfg: LLMOpsConfig, console: Console) -> dict[str, int] | None:
    """Copy old-format collections into the Edge store, printing what moved (None: not embedded)."""
    from services.retrieval.store.legacy import migrate

    if store.backend != "edge":
        console.print(f"nothing to migrate: the config names {store.describe()}", markup=False)
        return None
    configs = {c.name: c for c in cfg.retrieval.collections}
    copied = migrate(store, configs)
    for name, n in copied.items():
        console.print(
            f"migrated {name}: {n:,} points into {store.describe()} (nothing re-embedded)", markup=False
        )
    if not copied:
        console.print(f"nothing to migrate in {store.describe()}", markup=False)
    return copied


def default_url(cfg: LLMOpsConfig) -> str:
    host = cfg.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.gateway.port}"


def store_label(cfg: LLMOpsConfig) -> str:
    """Which store the config names, as :meth:`VectorStore.describe` words it."""
    vs = cfg.retrieval.vector_store
    if vs.url:
        return f"Qdrant server at {vs.url}"
    root = os.path.abspath(os.path.expanduser(vs.path or os.path.join(cfg.data_dir, "qdrant")))
    return f"embedded Qdrant Edge at {os.path.join(root, 'edge')}"


def print_summary(summary: IngestSummary, console: Console, as_json: bool = False) -> None:
    if as_json:
        console.print_json(json.dumps(summary.as_dict()))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in summary.lines():
        table.add_row(Text(key, style="bold", no_wrap=True), Text(value, overflow="fold"))  # paths whole
    console.print(table)


# -- through the running platform ------------------------------------------------------------------
class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _error_message(resp: Any) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]


def submit_documents(
    client: Any, url: str, collection: str, docs: Sequence[Document]
) -> list[dict[str, Any]]:
    """POST ``docs`` in one request, halving the batch on 413 (body too large). One result per request."""
    body = {
        "documents": [
            {"id": d.doc_id, "text": d.text, "metadata": d.metadata, "source": d.source} for d in docs
        ]
    }
    resp = client.post(f"{url}/v1/collections/{quote(collection, safe='')}/documents", json=body)
    if resp.status_code == 413 and len(docs) > 1:
        half = len(docs) // 2
        return submit_documents(client, url, collection, docs[:half]) + submit_documents(
            client, url, collection, docs[half:]
        )
    if resp.status_code >= 400:
        raise ApiError(resp.status_code, _error_message(resp))
    return [resp.json()]


def _remote(
    args: argparse.Namespace,
    cfg: LLMOpsConfig,
    collection: str,
    url: str,
    fields: RowFields,
    console: Console,
    err: Console,
    label: str,
) -> int:
    import httpx
    from rich.progress import Progress

    from pipelines.ingest.pipeline import IngestSummary, collection_config
    from pipelines.ingest.sources import read_documents
    from pipelines.ingest.validate import QuarantineWriter, dedupe_ids, quarantine_path, validate_documents

    url = url.rstrip("/")
    key = args.api_key or os.environ.get("LLMOPS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    where = f"running platform at {url}{label}"
    if args.tenant != "local":
        err.print(f"note: the platform writes under the API key's tenant; --tenant {args.tenant} is not sent")
    with httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        try:
            if args.delete:
                resp = client.delete(
                    f"{url}/v1/collections/{quote(collection, safe='')}/documents/{quote(args.delete, safe='')}"
                )
                if resp.status_code >= 400:
                    raise ApiError(resp.status_code, _error_message(resp))
                console.print(
                    f"deleted {args.delete!r} from {collection}; wrote to: {where}: {resp.json()}",
                    markup=False,
                )
                return 0
            t0, started = time.perf_counter(), time.time()
            try:
                read = read_documents(args.path, fields)
            except (FileNotFoundError, ValueError) as exc:
                err.print(f"error: {exc}")
                return 2
            docs, dupes = dedupe_ids(read.documents)
            valid, invalid = validate_documents(docs, collection_config(cfg, collection))
            qwriter = QuarantineWriter(quarantine_path(cfg.data_dir, collection, started))
            qwriter.write(read.quarantined + dupes + invalid)
            qwriter.close()
            summary = IngestSummary(collection, "(the API key's)", where)
            summary.docs_seen = len(read.documents) + len(read.quarantined)
            with Progress(console=console, disable=args.no_progress) as bar:
                task = bar.add_task(f"ingest {collection}", total=len(valid))
                for lo in range(0, len(valid), HTTP_BATCH):
                    batch = valid[lo : lo + HTTP_BATCH]
                    for res in submit_documents(client, url, collection, batch):
                        summary.unchanged += int(res.get("unchanged", 0))
                        summary.docs_written += int(res.get("documents", 0)) - int(res.get("unchanged", 0))
                        summary.chunks_written += int(res.get("chunks_written", 0))
                        summary.stale_deleted += int(res.get("stale_deleted", 0))
                    bar.advance(task, len(batch))
        except (ApiError, httpx.HTTPError) as exc:
            hint = " (is the platform running there?)" if isinstance(exc, httpx.ConnectError) else ""
            err.print(f"error from {url}: {exc}{hint}")
            return 1
    summary.quarantined = qwriter.count
    summary.quarantine_file = str(Path(qwriter.path)) if qwriter.count else None
    summary.elapsed_s = time.perf_counter() - t0
    print_summary(summary, console, args.json)
    return 0

"""The ``llmops`` command: start the platform, check configs, talk to it."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import Any

from llmops.config import ConfigError, LLMOpsConfig, load_config, validate_config
from llmops.console import LOG_FORMATS


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


# -- llmops up -------------------------------------------------------------------------
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
    from llmops.up import cmd_up as run_up

    return run_up(cfg, args)


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
    return OpenAI(base_url=_url(args).rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=args.timeout)


def _url(args: argparse.Namespace) -> str:
    """``--url`` or ``$LLMOPS_URL``, else the platform running on the config's data_dir, else
    the config's gateway address; says which on stderr when it had to look."""
    if args.url:
        return str(args.url)
    cfg = _load(args)
    if cfg is None:
        raise SystemExit(2)
    from llmops.platform import locate_platform

    url, how = locate_platform(cfg)
    _print_err(f"using {url}: {how}")
    return url


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
    up.add_argument("--host", help="bind address of the gateway (default from config: 127.0.0.1)")
    up.add_argument("--port", type=int, help="HTTP port (default from config: 8000)")
    up.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness (600)")
    up.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also start a local Prometheus (Debian's `prometheus`) scraping the platform, "
        "with the alert rules loaded, and a Pushgateway (Debian's `prometheus-pushgateway`) "
        "for continuous-eval metrics, which it scrapes too; prints both URLs",
    )
    up.add_argument(
        "--sample-corpus",
        action="store_true",
        help="load the SQuAD sample paragraphs into the first collection when it is empty",
    )
    up.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("LLMOPS_LOG_FORMAT", "text"),
        help="lifecycle lines as text for people, or one JSON object per line for log pipelines "
        "(default: $LLMOPS_LOG_FORMAT or text)",
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
    from llmops.collections import add_parser as add_collections
    from llmops.platform import locate_platform
    from pipelines.continuous_eval.cli import add_parser as add_pipeline
    from pipelines.ingest.cli import add_parser as add_ingest
    from pipelines.safety.cli import add_parser as add_safety

    add_ingest(sub, load_config, locate_platform)
    add_pipeline(sub, load_config)
    add_eval(sub, load_config=load_config)
    add_safety(sub, load_config)
    add_collections(sub, load_config)

    for name, helptext, func in (
        ("models", "list the models the server offers", cmd_models),
        ("chat", "send one chat message and stream the answer", cmd_chat),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument(
            "--url",
            default=os.environ.get("LLMOPS_URL"),
            help="server (default: $LLMOPS_URL, else the llmops up running on the config's data_dir, "
            "else the config's gateway address)",
        )
        c.add_argument(
            "--config", help="YAML config whose data_dir and gateway to use when --url is not given"
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

"""The one typed config of the platform, loaded from YAML with ``LLMOPS_`` env overrides.

The root model composes each area's own config (``services.config`` for the
serving graph) and adds process-level settings. Unknown keys are errors that
name the key; every field has a description and bounds.

Environment overrides: ``LLMOPS_<FIELD>[__<FIELD>...]=value``, ``__`` separating
nesting levels and list indexes, values parsed as YAML scalars; e.g.
``LLMOPS_GATEWAY__PORT=9000`` or ``LLMOPS_MODELS__0__DEPLOYMENT__NUM_REPLICAS=2``.
Variables whose first part names no root field (``LLMOPS_CONFIG``, say) are
left alone, unless they use ``__`` (then a typo is an error, not ignored).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipelines.continuous_eval.config import ContinuousEvalConfig
from services.config import ServicesConfig
from services.deployment_config import StrictModel
from services.local_ray import is_loopback

ENV_PREFIX = "LLMOPS_"
DEFAULT_CONFIG_FILE = "llmops.yaml"
BUILTIN_DEFAULTS = "(built-in defaults: llmops/local.yaml)"


class RayConfig(StrictModel):
    """How ``llmops up`` starts Ray on this machine (ignored on Kubernetes)."""

    address: str | None = Field(
        None, description="Join an existing cluster (e.g. 'auto'); default: start one."
    )
    num_cpus: float | None = Field(
        None, gt=0, le=4096, description="Logical CPUs Ray schedules (default: all)."
    )
    num_gpus: float | None = Field(None, ge=0, le=64, description="GPUs Ray schedules (default: detected).")
    node_ip_address: str = Field(
        "127.0.0.1",
        description="Address every Ray server of the local cluster binds to (GCS, raylet, workers, "
        "replicas); loopback keeps the cluster unreachable from other machines.",
    )
    auth: Literal["token", "disabled"] = Field(
        "token",
        description="Ray's token auth for the local cluster: a fresh random token per run, in "
        "<data_dir>/run/ray-token (mode 0600). 'disabled' is refused unless node_ip_address is loopback.",
    )

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> RayConfig:
        if self.address is None and self.auth == "disabled" and not is_loopback(self.node_ip_address):
            raise ValueError(
                f'ray.auth is "disabled" but ray.node_ip_address is "{self.node_ip_address}": anyone who '
                "can reach that address could run code in the cluster; use auth: token, or a loopback address"
            )
        return self


class LLMOpsConfig(ServicesConfig):
    """Root config: the serving graph plus where data lives and how Ray starts."""

    data_dir: str = Field("./.llmops", min_length=1, description="Directory for data the platform writes.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Local Ray start-up.")
    continuous_eval: ContinuousEvalConfig = Field(
        default_factory=ContinuousEvalConfig,
        description="`llmops pipeline continuous-eval`: scoring sampled live traffic from the inference table.",
    )

    def services(self) -> ServicesConfig:
        """The part the Serve application is built from, with local paths made absolute
        (replicas do not share the driver's working directory)."""
        data = self.model_dump(include=set(ServicesConfig.model_fields))
        store = data["retrieval"]["vector_store"]
        if store["url"] is None:
            store["path"] = str(Path(store["path"] or Path(self.data_dir) / "qdrant").resolve())
        data["usage"]["path"] = str(
            Path(data["usage"]["path"] or Path(self.data_dir) / "usage.sqlite").resolve()
        )
        log = data["monitoring"]["request_log"]
        if log["path"] != "-":
            log["path"] = str(Path(log["path"] or Path(self.data_dir) / "logs" / "requests.jsonl").resolve())
        table = data["monitoring"]["inference_table"]
        if not (table["path"] or "").count("://"):  # a local directory (URLs stay as they are)
            table["path"] = str(Path(table["path"] or Path(self.data_dir) / "inference").resolve())
        return ServicesConfig.model_validate(data)


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    value: Any


class ConfigError(ValueError):
    """A config that failed validation; ``issues`` lists each problem with its path."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = [f"{source}: {len(issues)} error(s)"]
        lines += [f"  {i.path}: {i.message} (got {_short(i.value)})" for i in issues]
        super().__init__("\n".join(lines))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _set_path(data: dict[str, Any], parts: list[str], value: Any, var: str) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(var, [ConfigIssue(".".join(parts[: i + 1]), "no such list index", part)])
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``LLMOPS_`` overrides to raw config data (see the module docstring)."""
    fields = set(LLMOpsConfig.model_fields)
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in fields and len(parts) == 1:
            continue  # LLMOPS_CONFIG, LLMOPS_TEST_MODEL, ...: not config fields
        _set_path(data, parts, yaml.safe_load(environ[var]) if environ[var] else "", var)
    return data


def _defaults_with_lists(data: dict[str, Any]) -> dict[str, Any]:
    # list overrides like LLMOPS_MODELS__0__... need the default lists present
    defaults = LLMOpsConfig().model_dump(exclude_none=True)
    for key in ("models", "embeddings"):
        data.setdefault(key, defaults[key])
    return data


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> LLMOpsConfig:
    """Load and validate: ``path``, else ``$LLMOPS_CONFIG``, else ``./llmops.yaml`` if
    present, else the built-in local defaults (:func:`builtin_defaults_text`); then the
    env overrides."""
    environ = os.environ if environ is None else environ
    source = str(path or environ.get("LLMOPS_CONFIG") or "")
    if not source and Path(DEFAULT_CONFIG_FILE).is_file():
        source = DEFAULT_CONFIG_FILE
    if source:
        try:
            text = Path(source).read_text()
        except FileNotFoundError:
            raise ConfigError(source, [ConfigIssue("(file)", "no such file", source)]) from None
    else:
        source, text = BUILTIN_DEFAULTS, builtin_defaults_text()
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, [ConfigIssue("(file)", f"not valid YAML: {exc}", None)]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("(root)", "the file must hold a mapping", data)])
    data = env_overrides(_defaults_with_lists(data), environ)
    return validate_config(data, source)


def builtin_defaults_text() -> str:
    """The built-in defaults: ``llmops/local.yaml``, shipped as package data
    (``configs/local.yaml`` in the repository is a link to it)."""
    return (resources.files("llmops") / "local.yaml").read_text()


def validate_config(data: dict[str, Any], source: str = "(config)") -> LLMOpsConfig:
    try:
        return LLMOpsConfig.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            path = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            issues.append(ConfigIssue(path, msg, err.get("input")))
        raise ConfigError(source, issues) from None

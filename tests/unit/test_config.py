"""The config contract: strict keys, bounds, cross-field rules, env overrides, CLI output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops.cli import main
from llmops.config import ConfigError, LLMOpsConfig, load_config, validate_config
from services.deployment_config import DeploymentSettings
from services.gateway.config import hash_key

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name, environ={})
    assert cfg.gateway.host == "127.0.0.1" and cfg.models


def test_builtin_defaults_serve_extractive_on_loopback_without_auth() -> None:
    cfg = load_config(None, environ={})
    assert [m.engine for m in cfg.models] == ["extractive"]
    assert cfg.embeddings[0].name == "all-minilm-l6-v2"
    assert (cfg.gateway.host, cfg.gateway.port, cfg.auth.enabled) == ("127.0.0.1", 8000, False)
    assert cfg.data_dir == "./.llmops"


def test_builtin_defaults_are_configs_local_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no ./llmops.yaml here
    builtin = load_config(None, environ={})
    shipped = load_config(ROOT / "configs" / "local.yaml", environ={})
    assert builtin == shipped
    # e.g. the price list: without it no cost would be recorded
    assert builtin.models[0].pricing.mode == "token"  # type: ignore[union-attr]
    assert builtin.rag and builtin.retrieval.collections
    # the package data is the file the repository's configs/local.yaml is
    from llmops.config import builtin_defaults_text

    assert builtin_defaults_text() == (ROOT / "configs" / "local.yaml").read_text()


def test_ray_auth_may_be_off_only_on_loopback() -> None:
    validate_config({"ray": {"auth": "disabled"}})  # loopback: the user's choice
    validate_config({"ray": {"node_ip_address": "192.0.2.7"}})  # token auth: fine
    with pytest.raises(ConfigError) as exc:
        validate_config({"ray": {"node_ip_address": "192.0.2.7", "auth": "disabled"}})
    issue = exc.value.issues[0]
    assert issue.path == "ray" and "192.0.2.7" in issue.message and "auth: token" in issue.message
    # joining a cluster: its own auth applies
    validate_config({"ray": {"address": "auto", "node_ip_address": "192.0.2.7", "auth": "disabled"}})


def test_unknown_key_and_bad_value_are_reported_with_paths(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump({"gateway": {"prot": 1, "port": 70000}, "models": [{"name": "m", "engine": "nope"}]})
    )
    with pytest.raises(ConfigError) as exc:
        load_config(f, environ={})
    paths = {i.path: i for i in exc.value.issues}
    assert paths["gateway.prot"].message == "unknown key"
    assert paths["gateway.port"].value == 70000 and "65535" in paths["gateway.port"].message
    assert any(p.startswith("models.0") for p in paths)


def test_auth_off_only_on_loopback() -> None:
    with pytest.raises(ConfigError, match="auth may be off only when bound to loopback"):
        validate_config({"gateway": {"host": "0.0.0.0"}})
    key = {"tenant": "acme", "sha256": hash_key("k")}
    cfg = validate_config({"gateway": {"host": "0.0.0.0"}, "auth": {"enabled": True, "keys": [key]}})
    assert cfg.auth.keys[0].tenant == "acme"
    with pytest.raises(ConfigError, match=r"auth\.keys is empty"):
        validate_config({"auth": {"enabled": True}})


def test_key_digest_must_be_a_digest_not_a_key() -> None:
    with pytest.raises(ConfigError, match="64 lower-case hex"):
        validate_config({"auth": {"enabled": True, "keys": [{"tenant": "acme", "sha256": "sk-plaintext"}]}})


def test_env_overrides_nested_fields_and_list_items(tmp_path: Path) -> None:
    env = {
        "LLMOPS_GATEWAY__PORT": "9001",
        "LLMOPS_MODELS__0__MAX_SENTENCES": "5",
        "LLMOPS_AUTH__ENABLED": "false",
        "LLMOPS_CONFIG": "ignored-here",
        "LLMOPS_TEST_MODEL": "/not/a/field",
    }
    cfg = load_config(ROOT / "configs" / "local.yaml", environ=env)
    assert cfg.gateway.port == 9001
    assert cfg.models[0].max_sentences == 5  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"gateway\.bogus: unknown key"):
        load_config(ROOT / "configs" / "local.yaml", environ={"LLMOPS_GATEWAY__BOGUS": "1"})


def test_names_unique_and_embedding_reference_checked() -> None:
    with pytest.raises(ConfigError, match=r"repeated"):
        validate_config({"models": [{"name": "all-minilm-l6-v2", "engine": "extractive"}]})
    with pytest.raises(ConfigError, match="embedding_model"):
        validate_config({"models": [{"name": "x", "engine": "extractive", "embedding_model": "nope"}]})


def test_deployment_settings_map_to_serve_options() -> None:
    fixed = DeploymentSettings(num_replicas=3, num_cpus=0.5, num_gpus=1).serve_options("d")
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    auto = DeploymentSettings.model_validate(
        {
            "autoscaling": {
                "min_replicas": 0,
                "max_replicas": 4,
                "target_ongoing_requests": 3,
                "allow_scale_to_zero": True,
            }
        }
    ).serve_options("d")
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"]["min_replicas"] == 0 and auto["autoscaling_config"]["max_replicas"] == 4
    with pytest.raises(ValueError, match="allow_scale_to_zero"):
        DeploymentSettings.model_validate({"autoscaling": {"min_replicas": 0, "max_replicas": 2}})
    with pytest.raises(ValueError, match="must not exceed"):
        DeploymentSettings.model_validate({"autoscaling": {"min_replicas": 3, "max_replicas": 2}})


def test_embedding_batch_must_fit_ongoing_requests() -> None:
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        validate_config({"embeddings": [{"max_batch_size": 64, "deployment": {"max_ongoing_requests": 5}}]})


def test_every_field_has_a_description() -> None:
    missing: list[str] = []

    def walk(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description and prefix + name not in {"models", "embeddings"}:
                missing.append(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")

    walk(LLMOpsConfig, "")
    assert missing == []


def test_cli_config_validate_prints_path_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("gateway:\n  port: -1\n  colour: blue\n")
    assert main(["config", "validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert "gateway.port: Input should be greater than or equal to 1 (got -1)" in err
    assert "gateway.colour: unknown key (got 'blue')" in err
    assert main(["config", "validate", str(ROOT / "configs" / "local.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_keys_create_prints_a_working_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    key = out.split("): ")[1].split()[0]
    assert hash_key(key) in out and key.startswith("sk-llmops-")

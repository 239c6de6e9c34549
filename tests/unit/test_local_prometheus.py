"""The local Prometheus's config (the process itself is covered by the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops.local_prometheus import LocalPrometheus
from monitoring.config import MonitoringConfig
from monitoring.rules import ALERTS

pytestmark = pytest.mark.unit


def test_relative_data_dir_still_loads_the_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make up` uses data_dir ./.llmops; Prometheus resolves a relative rule_files glob
    # against its config file's folder and silently loads nothing when it matches no file
    monkeypatch.chdir(tmp_path)
    prom = LocalPrometheus(MonitoringConfig(metrics={"job": "llmops-local"}), "./.llmops")
    config = yaml.safe_load(prom.write_config().read_text())
    [rules] = config["rule_files"]
    assert Path(rules).is_absolute() and Path(rules).is_file()
    alerts = {
        r["alert"]
        for g in yaml.safe_load(Path(rules).read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert alerts == set(ALERTS)
    [job] = config["scrape_configs"]
    assert job["job_name"] == "llmops-local" and job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]

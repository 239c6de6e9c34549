"""The local Prometheus's and Pushgateway's config (the processes themselves are covered by
the integration tests)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from llmops.local_prometheus import (
    PUSHGATEWAY_JOB,
    LocalPrometheus,
    LocalPushgateway,
    PushgatewayNotInstalledError,
)
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
    # no Pushgateway given: no scrape job for one
    assert "honor_labels" not in job


def test_pushgateway_is_scraped_with_honor_labels(tmp_path: Path) -> None:
    mon = MonitoringConfig(metrics={"job": "llmops-local"}, pushgateway={"job": "eval-local", "port": 19091})
    pgw = LocalPushgateway(mon, tmp_path)
    assert (pgw.address, pgw.url) == ("127.0.0.1:19091", "http://127.0.0.1:19091")
    prom = LocalPrometheus(mon, tmp_path, pushgateway=pgw.address)
    platform, push = yaml.safe_load(prom.write_config().read_text())["scrape_configs"]
    assert platform["job_name"] == "llmops-local" and "honor_labels" not in platform
    # honor_labels keeps the pushed job="eval-local" the quality rules select on
    assert push == {
        "job_name": PUSHGATEWAY_JOB,
        "honor_labels": True,
        "static_configs": [{"targets": ["127.0.0.1:19091"]}],
    }
    rules = prom.rules_file.read_text()
    assert 'llmops_eval_score_count{job="eval-local"' in rules and 'job="llmops-continuous-eval"' not in rules


def test_pushgateway_command_listens_on_loopback_and_keeps_its_data_under_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # any executable stands in for the binary: only the command line is checked here
    mon = MonitoringConfig(pushgateway={"binary": sys.executable})
    pgw = LocalPushgateway(mon, "./.llmops", port=19999)
    binary, *flags = pgw.command()
    assert binary == shutil.which(sys.executable)
    assert "--web.listen-address=127.0.0.1:19999" in flags
    [persistence] = [f.split("=", 1)[1] for f in flags if f.startswith("--persistence.file=")]
    # never Debian's default /var/lib/prometheus/pushgateway.data
    assert Path(persistence) == (tmp_path / ".llmops" / "pushgateway" / "metrics.db")
    assert LocalPushgateway(mon, "./.llmops").address == "127.0.0.1:9091"


def test_missing_pushgateway_binary_says_how_to_install_it(tmp_path: Path) -> None:
    pgw = LocalPushgateway(MonitoringConfig(pushgateway={"binary": "no-such-pushgateway"}), tmp_path)
    with pytest.raises(PushgatewayNotInstalledError, match="apt-get install prometheus-pushgateway"):
        pgw.start()


def test_with_prometheus_wants_the_pushgateway_port_free(tmp_path: Path) -> None:
    from llmops.config import validate_config
    from llmops.platform import InternalPorts
    from llmops.up import _wanted_ports

    cfg = validate_config(
        {
            "data_dir": str(tmp_path),
            "monitoring": {"pushgateway": {"port": 19092}, "prometheus": {"port": 19093}},
        }
    )
    ports = InternalPorts(haproxy_stats=1, haproxy_metrics=2, fallback_proxy=3)
    wanted = _wanted_ports(cfg, ports, with_prometheus=True)
    assert wanted["monitoring.pushgateway.port"] == ("127.0.0.1", 19092)
    assert wanted["monitoring.prometheus.port"] == ("127.0.0.1", 19093)
    assert "monitoring.pushgateway.port" not in _wanted_ports(cfg, ports, with_prometheus=False)

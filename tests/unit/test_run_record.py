"""Run records, leftovers, ports, placement and lifecycle lines of `llmops up`, without Ray."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llmops.config import validate_config
from llmops.console import Console
from llmops.platform import locate_platform, placement_problems
from llmops.run_record import (
    RUN_ID_ENV,
    RunLock,
    RunRecord,
    busy_ports,
    leftover_processes,
    read_record,
    running_record,
    stop_processes,
)

pytestmark = pytest.mark.unit


def test_one_live_run_per_data_dir_and_its_record(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire()
    assert not second.acquire()  # held: a second `llmops up` on this data_dir is refused
    record = RunRecord.new(tmp_path, "http://127.0.0.1:8123", {"gateway": 8123})
    record.write()
    assert running_record(tmp_path) == record
    first.release()
    assert running_record(tmp_path) is None  # nobody holds the lock: no platform runs
    assert read_record(tmp_path) is None  # a clean stop removes the record
    assert second.acquire()
    second.release()


def test_a_dead_runs_record_is_not_a_running_platform(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    assert lock.acquire()
    RunRecord.new(tmp_path, "http://127.0.0.1:9", {}).write()
    lock.release(remove_record=False)  # as if killed: the kernel dropped the lock, the file stays
    assert read_record(tmp_path) is not None
    assert running_record(tmp_path) is None
    cfg = validate_config({"data_dir": str(tmp_path), "gateway": {"port": 8765}})
    url, how = locate_platform(cfg)
    assert url == "http://127.0.0.1:8765" and "no llmops up runs" in how


def test_clients_find_the_running_platforms_url(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    assert lock.acquire()
    try:
        RunRecord.new(tmp_path, "http://127.0.0.1:9123", {"gateway": 9123}).write()
        cfg = validate_config({"data_dir": str(tmp_path)})  # its config says port 8000
        url, how = locate_platform(cfg)
        assert url == "http://127.0.0.1:9123"
        assert f"pid {os.getpid()}" in how and str(tmp_path.resolve()) in how
    finally:
        lock.release()


def test_leftovers_are_found_by_run_id_and_stopped() -> None:
    run_id = "test-" + os.urandom(4).hex()
    # a child that starts a grandchild with an environment of its own, as Ray's raylet does
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], env={}); time.sleep(120)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, RUN_ID_ENV: run_id},
        start_new_session=True,  # another session and group: found all the same
    )
    deadline = time.monotonic() + 30
    while not psutil.Process(child.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(child.pid).children()[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        found = leftover_processes(run_id)
        assert [p.pid for p in found] == sorted([child.pid, grandchild.pid])
        assert stop_processes(found, grace_s=10) == []
        assert child.wait(timeout=10) is not None
        assert not grandchild.is_running()
        assert other.poll() is None  # only the run's own processes
    finally:
        for p in (child, other):
            p.kill()
            p.wait()


def test_busy_ports_name_the_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        lines = busy_ports({"gateway.port": ("127.0.0.1", port)})
    assert len(lines) == 1
    assert f"port {port} (gateway.port) on 127.0.0.1 is in use" in lines[0]
    assert f"pid {os.getpid()} ({psutil.Process().name()})" in lines[0]
    assert busy_ports({"gateway.port": ("127.0.0.1", port)}) == []  # closed: free again


def _cfg(**extractive_deployment: object) -> object:
    return validate_config(
        {"models": [{"name": "extractive", "engine": "extractive", "deployment": extractive_deployment}]}
    )


def test_placement_names_what_cannot_be_placed_and_the_fix() -> None:
    cfg = _cfg(num_cpus=0.5, autoscaling={"min_replicas": 2, "max_replicas": 2})
    # extractive 2 x 0.5 + MiniLM 0.5 + retrieval 0.25 + rag 0.5 + usage + gateway 0.25 on 2 CPUs
    problem = placement_problems(cfg, {"CPU": 2.0})  # type: ignore[arg-type]
    assert problem is not None
    first = problem.splitlines()[0]
    assert "Ray has 2 CPU" in first and "gateway (lacks" in first
    assert "<- cannot be placed" in problem and "(gateway.deployment)" in problem
    assert "ray.num_cpus" in problem.splitlines()[-1]
    assert placement_problems(cfg, {"CPU": 8.0}) is None  # type: ignore[arg-type]


def test_gpu_deployments_need_gpus() -> None:
    cfg = _cfg(num_cpus=0.25, num_gpus=1)
    problem = placement_problems(cfg, {"CPU": 8.0, "GPU": 0.0})  # type: ignore[arg-type]
    assert problem is not None and "generation-extractive (lacks 1 GPU)" in problem


def test_json_lifecycle_lines_are_one_object_each() -> None:
    out = io.StringIO()
    console = Console("json", out=out, err=out)
    console.event("ready", "llmops is ready\n  OpenAI API ...", url="http://127.0.0.1:8000")
    console.error("port 8000 is in use", event="ports_in_use")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [("ready", "info"), ("ports_in_use", "error")]
    assert lines[0]["url"] == "http://127.0.0.1:8000" and lines[0]["ts"].endswith("Z")


def test_text_errors_go_to_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    Console("text", out=out, err=err).error("boom")
    assert (out.getvalue(), err.getvalue()) == ("", "error: boom\n")


def test_the_reaper_kills_a_stuck_stop_and_what_the_run_left() -> None:
    from llmops.reaper import reap

    run_id = "test-" + os.urandom(4).hex()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    stuck = subprocess.Popen(sleeper)  # an `llmops up` whose stop hangs
    left = subprocess.Popen(sleeper, env={**os.environ, RUN_ID_ENV: run_id})  # e.g. HAProxy
    try:
        assert reap(run_id, stuck.pid, deadline_s=0.5) == 2
        assert stuck.wait(timeout=10) == -9
        assert left.wait(timeout=10) is not None
    finally:
        for p in (stuck, left):
            p.kill()
            p.wait()


def test_a_process_with_a_file_in_the_ray_session_is_a_leftover_without_the_marker(tmp_path: Path) -> None:
    session = tmp_path / "session_2026-12-01_00-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    log = session / "logs" / "dashboard_agent.log"
    agent = subprocess.Popen(  # like Ray's agents: its own environment, a log file in the session
        [sys.executable, "-c", f"f = open({str(log)!r}, 'a'); import time; time.sleep(120)"],
        env={"PATH": os.environ["PATH"]},
    )
    try:
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        assert leftover_processes("no-such-run") == []
        assert [p.pid for p in leftover_processes("no-such-run", str(session))] == [agent.pid]
    finally:
        agent.kill()
        agent.wait()

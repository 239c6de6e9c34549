"""What a running ``llmops up`` leaves under ``<data_dir>/run``, and how the next one uses it.

- ``lock``: held (``flock``) for the life of the process; the kernel releases it
  when the process dies, even by SIGKILL, so "is a platform running on this
  data_dir?" never trusts a stale pid.
- ``llmops.json``: the run record: pid, process session and group, the run id,
  the URL and every port, the Ray token file. Clients (``llmops ingest``,
  ``chat``, ``models``) read the URL from it; the next ``llmops up`` reads the
  run id from it to find what a killed run left behind.
- Every process the run starts (Ray's, HAProxy, Prometheus) inherits
  ``LLMOPS_RUN_ID=<run id>`` in its environment; that is how leftovers are found
  (:func:`leftover_processes`), whatever their parent or process group became.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

RUN_ID_ENV = "LLMOPS_RUN_ID"
RECORD = "llmops.json"


def run_dir(data_dir: str | Path) -> Path:
    return Path(data_dir).resolve() / "run"


@dataclass
class RunRecord:
    """One ``llmops up`` process, as written to ``<data_dir>/run/llmops.json``."""

    run_id: str
    pid: int
    sid: int
    pgid: int
    data_dir: str
    url: str
    ports: dict[str, int] = field(default_factory=dict)
    status: str = "starting"  # starting | ready | stopping
    started_at: float = field(default_factory=time.time)
    ray_token_file: str | None = None
    ray_session_dir: str | None = None  # Ray's /tmp/ray/session_* of this run, once Ray is up

    @classmethod
    def new(cls, data_dir: str | Path, url: str, ports: dict[str, int]) -> RunRecord:
        pid = os.getpid()
        return cls(
            run_id=uuid.uuid4().hex,
            pid=pid,
            sid=os.getsid(pid),
            pgid=os.getpgid(pid),
            data_dir=str(Path(data_dir).resolve()),
            url=url,
            ports=ports,
        )

    def write(self) -> None:
        """Atomically replace the record (a reader never sees half a file)."""
        path = run_dir(self.data_dir) / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


def read_record(data_dir: str | Path) -> RunRecord | None:
    """The record under ``data_dir`` (of a live or a dead run), or None."""
    try:
        data = json.loads((run_dir(data_dir) / RECORD).read_text())
        return RunRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    """The exclusive lock on one data_dir; :meth:`acquire` fails while a live run holds it."""

    def __init__(self, data_dir: str | Path) -> None:
        self.dir = run_dir(data_dir)
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = (self.dir / "lock").open("a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        # not inherited: Ray's processes must not keep the data_dir locked after we die
        os.set_inheritable(f.fileno(), False)
        self._file = f
        return True

    def release(self, remove_record: bool = True) -> None:
        if self._file is None:
            return
        if remove_record:
            (self.dir / RECORD).unlink(missing_ok=True)
        self._file.close()  # releases the flock
        self._file = None


def running_record(data_dir: str | Path) -> RunRecord | None:
    """The record of the run that holds ``data_dir`` right now, or None if none does."""
    record = read_record(data_dir)
    if record is None:
        return None
    probe = RunLock(data_dir)
    if probe.acquire():  # nobody holds it: the record is a dead run's
        probe.release(remove_record=False)
        return None
    return record


# -- leftovers of a dead run ----------------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


def _holds_file_under(pid: int, folder: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(folder):
                    return True
    except OSError:
        pass
    return False


def leftover_processes(run_id: str, ray_session_dir: str | None = None) -> list[Leftover]:
    """Live processes of run ``run_id`` other than this one: those whose environment carries
    ``LLMOPS_RUN_ID=run_id``, those with a file open in the run's Ray session directory
    (Ray's agents: their environment is not always readable), and their descendants."""
    import psutil

    marker = f"{RUN_ID_ENV}={run_id}".encode()
    session = ray_session_dir.rstrip("/") + "/" if ray_session_dir else None
    found: dict[int, Leftover] = {}
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == os.getpid():
            continue
        try:
            env = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except OSError:  # another user's, or gone
            continue
        if marker not in env.split(b"\0") and not (session and _holds_file_under(proc.pid, session)):
            continue
        found[proc.pid] = Leftover(proc.pid, proc.info["name"] or "?")
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    found.setdefault(child.pid, Leftover(child.pid, child.name()))
    found.pop(os.getpid(), None)
    return sorted(found.values(), key=lambda p: p.pid)


def stop_processes(procs: list[Leftover], grace_s: float = 5.0) -> list[Leftover]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns those that were still running."""
    import psutil

    live = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(p.pid)
            proc.terminate()
            live.append(proc)
    _, alive = psutil.wait_procs(live, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    return [p for p in procs if p.pid in {a.pid for a in still}]


def kill_leftovers(run_id: str) -> int:
    """SIGKILL every leftover of ``run_id`` at once (the last resort of a stop); returns the count."""
    count = 0
    for p in leftover_processes(run_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
            count += 1
    return count


# -- ports ----------------------------------------------------------------------------------------
#: where :func:`free_port` looks: below the kernel's ephemeral range (32768+), where Ray's
#: many gRPC servers take OS-assigned ports, and above Ray's worker ports (10002-19999)
FREE_PORT_RANGE = (20000, 29999)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, from :data:`FREE_PORT_RANGE` (so that the processes
    Ray starts meanwhile, binding port 0, cannot take it before it is used)."""
    import random

    lo, hi = FREE_PORT_RANGE
    for _ in range(200):
        port = random.randint(lo, hi)
        if not port_in_use(host, port):
            return port
    raise RuntimeError(f"no free port in {lo}-{hi} on {host}")


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_holder(port: int) -> str | None:
    """ "pid N (name)" of the process listening on ``port``, when this user may see it."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"pid {conn.pid}"
    return None


def busy_ports(wanted: dict[str, tuple[str, int]]) -> list[str]:
    """One line per port in ``wanted`` ({label: (host, port)}) that is taken, naming its holder."""
    lines = []
    for label, (host, port) in wanted.items():
        if port_in_use(host, port):
            holder = port_holder(port)
            lines.append(f"port {port} ({label}) on {host} is in use" + (f" by {holder}" if holder else ""))
    return lines

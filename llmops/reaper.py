"""The last word of a stopping ``llmops up``: nothing of the run outlives the stop deadline.

``llmops up`` starts this (detached, in its own session) when it begins to stop.
It waits for that process to exit, then stops every process still carrying the
run id (HAProxy, a Ray worker that hung). If the process is still there at the
deadline — Ray can block a stop for a minute when its GCS went first — it kills
it too. So a stop takes at most the deadline, and leaves nothing behind, however
Ray's own shutdown went.

    python -m llmops.reaper RUN_ID PID DEADLINE_S RAY_SESSION_DIR
"""

from __future__ import annotations

import os
import sys
import time

from llmops.run_record import leftover_processes, stop_processes

SWEEP_S = 10.0  # Ray's processes exit on their own once their driver is gone; give them this long


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(run_id: str, pid: int, deadline_s: float, ray_session_dir: str | None = None) -> int:
    """Wait for ``pid`` (killing it at the deadline), then stop the run's leftovers; returns how
    many processes had to be stopped."""
    end = time.monotonic() + deadline_s
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.2)
    forced = _alive(pid)
    if forced:
        print(
            f"llmops up (pid {pid}) did not stop within {deadline_s:.0f}s; killing it",
            file=sys.stderr,
            flush=True,
        )
        os.kill(pid, 9)
    stopped, sweep_end = 0, time.monotonic() + SWEEP_S
    while (left := leftover_processes(run_id, ray_session_dir)) and time.monotonic() < sweep_end:
        stopped += len(left)
        stop_processes(left, grace_s=2.0)
        time.sleep(0.2)
    return stopped + int(forced)


def main(argv: list[str]) -> int:
    run_id, pid, deadline, session = argv
    reap(run_id, int(pid), float(deadline), session or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

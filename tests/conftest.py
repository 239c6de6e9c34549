"""Shared test setup: offline, loopback-only Ray.

Importing llmops sets the environment Ray reads at import time (see
``services.local_ray``), before any test module imports ray.
"""

import os

import llmops  # noqa: F401  (prepares Ray's environment)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

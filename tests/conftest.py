"""Shared test setup: offline, loopback-only Ray.

Importing llmops sets the environment Ray reads at import time (see
``services.local_ray``), before any test module imports ray.
"""

import os

import pytest

import llmops  # noqa: F401  (prepares Ray's environment)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def openvino_cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One export cache for the session's OpenVINO encoders (an export takes seconds)."""
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="session")
def openvino_f32(openvino_cache):  # type: ignore[no-untyped-def]
    """The bundled model on OpenVINO at f32 and one thread: reproduces torch's vectors."""
    from services.embeddings.encoder import Encoder

    return Encoder(None, "cpu", "openvino", threads=1, cache_dir=openvino_cache, precision="f32")

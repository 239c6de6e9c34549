"""The embedding encoder's backends: torch as is, and the locally exported OpenVINO graph."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from services.embeddings.config import EmbeddingModelConfig
from services.embeddings.encoder import Encoder, publish_dir, resolve_backend

pytestmark = pytest.mark.unit

TEXTS = [
    "a",
    "Who was the leader of the Normans?",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. " * 3,
    "Retrieval-augmented generation grounds answers in retrieved passages. " * 80,  # over the window
]


def test_auto_is_openvino_on_cpu_and_torch_on_cuda() -> None:
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("auto", "cuda:0") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="cpu' only"):
        resolve_backend("openvino", "cuda")


def test_config_names_the_field_when_openvino_is_asked_for_a_gpu() -> None:
    with pytest.raises(ValidationError, match="backend 'openvino' runs on device 'cpu' only"):
        EmbeddingModelConfig(name="m", backend="openvino", device="cuda")
    with pytest.raises(ValidationError, match="backend"):
        EmbeddingModelConfig(name="m", backend="onnx")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def torch_encoder() -> Encoder:
    return Encoder(None, "cpu", "torch")


@pytest.fixture(scope="module")
def cache(openvino_cache: Path) -> Path:
    return openvino_cache


@pytest.fixture(scope="module")
def ov_f32(openvino_f32: Encoder) -> Encoder:
    return openvino_f32


def test_openvino_reproduces_torch_vectors(torch_encoder: Encoder, ov_f32: Encoder) -> None:
    ref = torch_encoder.encode(TEXTS, batch_size=2)
    got = ov_f32.encode(TEXTS, batch_size=2)
    assert got.shape == ref.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(ref * got, axis=1))) > 0.9999
    # order-independent: rows come back in the caller's order whatever the length sort did
    assert np.allclose(ov_f32.encode(TEXTS[::-1], batch_size=3), got[::-1], atol=1e-5)
    assert ov_f32.encode([], batch_size=4).shape == (0, 384)


def test_auto_precision_stays_close_to_torch(torch_encoder: Encoder, cache: Path, ov_f32: Encoder) -> None:
    auto = Encoder(None, "cpu", "openvino", threads=1, cache_dir=cache, precision="auto")
    ref = torch_encoder.encode(TEXTS, batch_size=4)
    assert float(np.min(np.sum(ref * auto.encode(TEXTS, batch_size=4), axis=1))) > 0.999


def test_the_export_is_made_once_and_reused(
    cache: Path, ov_f32: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    mtime = (entries[0] / "model.onnx").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="llmops.embeddings"):
        Encoder(None, "cpu", "openvino", threads=1, cache_dir=cache, precision="f32")
    assert "reused" in caplog.text
    assert (entries[0] / "model.onnx").stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_cache_still_loads(tmp_path: Path, torch_encoder: Encoder) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        enc = Encoder(None, "cpu", "openvino", threads=1, cache_dir=ro / "sub", precision="f32")
        ref = torch_encoder.encode(TEXTS[:2], batch_size=2)
        assert float(np.min(np.sum(ref * enc.encode(TEXTS[:2], batch_size=2), axis=1))) > 0.9999
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(stat.S_IRWXU)


def test_publish_keeps_the_first_finished_export(tmp_path: Path) -> None:
    final, a, b = tmp_path / "final", tmp_path / "a", tmp_path / "b"
    for d, body in ((a, b"first"), (b, b"second")):
        d.mkdir()
        (d / "model.onnx").write_bytes(body)
    publish_dir(a, final)
    b_final = publish_dir(b, final)  # another process got there first: theirs stays, ours goes
    assert b_final == final and (final / "model.onnx").read_bytes() == b"first"
    assert not a.exists() and not b.exists()

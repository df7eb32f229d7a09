"""Shared test setup. The models here are tiny: one intra-op thread is faster than two fighting over two cores."""
import os

import pytest
import torch

torch.set_num_threads(1)
if not torch.cuda.is_available():
    # Triton kernels run on the CPU through the interpreter; it must be on before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose kernel backends explicitly; an exported HEDGESPEC_BACKEND must not leak into them."""
    if os.environ.get("HEDGESPEC_BACKEND"):
        monkeypatch.delenv("HEDGESPEC_BACKEND")

"""Test setup. Without a GPU the Triton kernels run under the interpreter, which must be switched on before
triton compiles anything, i.e. before lkconv is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lkconv import available_backends  # noqa: E402


def backend_available(name: str) -> bool:
    return available_backends()[name] == "available"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

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


@pytest.fixture(scope="session")
def cuda_emu_module():
    """lkconv's CUDA kernels compiled for the host under the CUDA execution-model emulation (built once per source
    version, ~1 min, cached under build/cuda_emulation). A failed build fails the tests that need it."""
    from lkconv import cuda_emulation

    return cuda_emulation.load()


@pytest.fixture
def cuda_emu(cuda_emu_module):
    """The emulation, on the emulated H100, with every new tensor filled with NaN (so an output element a kernel
    does not write fails the comparison) and the default thread schedule; restored afterwards."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    cuda_emu_module.select_device("h100")
    cuda_emu_module.set_schedule("forward", 0)
    cuda_emu_module.take_launches()
    try:
        yield cuda_emu_module
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        cuda_emu_module.select_device("h100")
        cuda_emu_module.set_schedule("forward", 0)

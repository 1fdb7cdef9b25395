"""What every `lkrobust` command shares: argument types, the checks run before any compute (model name,
checkpoint, device, results folder), torchrun set-up, and the one-line error report."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Optional


def count(minimum: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return n

    return parse


def writable_file(value: str) -> str:
    folder = os.path.dirname(os.path.abspath(value))
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {value}: {folder} is not a writable folder")
    return value


def fraction_or_float(value: str) -> float:
    """A number, or a fraction such as 4/255 (attack budgets are written so)."""
    try:
        num, sep, den = value.partition("/")
        x = float(num) / float(den) if sep else float(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 4/255, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return x


def unit_interval(value: str) -> float:
    x = fraction_or_float(value)
    if x > 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {value!r}")
    return x


def named_path(name: str, what: str) -> Callable[[str], str]:
    """An argument type for `NAME=PATH` (e.g. --data imagenet=PATH): returns PATH, or a one-line error naming
    the expected form and what the folder must hold."""
    def parse(value: str) -> str:
        given, sep, root = value.partition("=")
        if not sep or given != name:
            raise argparse.ArgumentTypeError(f"--data expects {name}=PATH ({what})")
        return root

    return parse


def maybe_init_distributed() -> bool:
    """Join the torchrun job this process belongs to; True if this call started the process group."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


@contextlib.contextmanager
def distributed_session():
    """Run a command inside the torchrun job, and leave it cleanly.

    A process group still alive at interpreter exit is torn down by destructors in no fixed order, and
    gloo's worker threads can then abort the process ("terminate called without an active exception")
    after all the work is done. So the ranks meet at a barrier and destroy the group before returning;
    on an error the group is destroyed without the barrier, which the other ranks may never reach.
    """
    import torch

    started = maybe_init_distributed()
    try:
        yield
    except BaseException:
        if started:
            torch.distributed.destroy_process_group()
        raise
    if started:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def resolve_device(name: Optional[str]) -> str:
    """The device to run on; an unknown or unavailable one is a ValueError naming it."""
    import torch

    if name is None:
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is visible")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return str(device)


def torch_distributed_rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def check_model_name(name: str) -> None:
    import timm

    import lkconv.models  # noqa: F401  (registers lkconv's models)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise ValueError(f"unknown model {name!r} (not a timm model name{'; similar: ' + ', '.join(close) if close else ''})")


def check_checkpoint(path: Optional[str]) -> None:
    if path is None:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"checkpoint {path} is not readable")


def prepare_out(out: str) -> None:
    """The results folder exists (it is created) and is writable, before any compute."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --out {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable")


def run_reporting_errors(command: str, fn: Callable[[], None]) -> int:
    """fn() with the errors a user can cause (missing files, bad values) reported in one line, exit status 2."""
    try:
        fn()
    except (FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        print(f"lkrobust {command}: error: {message}", file=sys.stderr)
        return 2
    return 0

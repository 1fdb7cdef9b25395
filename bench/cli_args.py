"""Argument types of the bench commands: each checks its value when the command line is parsed, so a bad value
fails in one line before any measurement (argparse exits with status 2)."""

from __future__ import annotations

import argparse
import os
from typing import List

import torch

from . import kernels, results


def csv_list(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def kernel_sizes_arg(value: str) -> List[int]:
    sizes = [positive_int(v) for v in csv_list(value)]
    if not sizes:
        raise argparse.ArgumentTypeError("expected a comma list of positive integers")
    return sizes


def shape_sets_arg(value: str) -> List[str]:
    sets = csv_list(value)
    bad = [s for s in sets if s not in kernels.SHAPE_SETS]
    if bad or not sets:
        raise argparse.ArgumentTypeError(f"unknown shape set(s) {bad or value!r}; choose from "
                                         f"{', '.join(kernels.SHAPE_SETS)}")
    return sets


def device_arg(value: str) -> torch.device:
    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {value!r} (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"benchmarks run on cpu or cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: no CUDA device is visible")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{value}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def results_file_arg(value: str) -> str:
    """An earlier results file, loaded now so that a bad one fails before the measurements, not after."""
    try:
        results.load(value)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{value} is not a results file of python -m bench ({exc})") from None
    return value


def writable_path(value: str) -> str:
    """A file path whose folder exists (it is created now) and is writable, checked before any measurement."""
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(value))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot create the folder of {value}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {value}: {folder} is not writable")
    return value

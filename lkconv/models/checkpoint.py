"""Loading released checkpoints: container unwrapping, `module.` prefixes, and errors that name the keys."""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

_CONTAINER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: unwraps {"model": ...}/{"state_dict": ...} containers (nested
    ones too) and strips a leading `module.` (DataParallel/DDP) from every key."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            raise ValueError(f"no state dict in this checkpoint (top-level keys: {sorted(obj)[:10]})")
    if not isinstance(obj, Mapping):
        raise ValueError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping], strict: bool = True,
                    map_location="cpu") -> nn.Module:
    """Load a checkpoint file (or an already loaded dict) into `model`.

    With `strict=True` every missing or unexpected key is an error that lists them; a merged checkpoint
    (`lkb_reparam` keys) loaded into an unmerged model, or the other way round, says which constructor flag
    to use."""
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
        path = checkpoint
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
            raise ValueError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from None
    state = unwrap_state_dict(checkpoint)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if strict and (missing or unexpected):
        hint = ""
        if any("lkb_reparam" in k for k in unexpected) and any("lkb_origin" in k for k in missing):
            hint = " (the checkpoint is re-parameterised: build the model with small_kernel_merged=True)"
        elif any("lkb_origin" in k for k in unexpected) and any("lkb_reparam" in k for k in missing):
            hint = " (the checkpoint is not re-parameterised: build the model with small_kernel_merged=False)"
        raise KeyError(f"checkpoint does not match the model{hint}: missing keys {_few(missing)}; "
                       f"unexpected keys {_few(unexpected)}")
    model.load_state_dict(state, strict=strict)
    return model


def _few(keys, n: int = 8) -> str:
    return "[]" if not keys else "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's pretrained filter: unwrap containers and prefixes of the released files."""
    return unwrap_state_dict(state_dict)

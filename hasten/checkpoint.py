"""Checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint is a folder holding ``tensors.safetensors`` (model, EMA, optimiser moments, RNG
states) and ``state.json`` (step, optimiser hyper-parameters, anything else that is not a tensor).
It is written to a temporary folder and renamed into place, so a run killed while saving leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import os

import torch

from hasten.errors import HastenError
from hasten.io import atomic_directory, read_json, read_safetensors, write_json_atomic

TENSORS = "tensors.safetensors"
STATE = "state.json"


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str = "optim"):
    """Split an optimiser's state dict into (tensors, JSON-able metadata)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict,
                        prefix: str = "optim") -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: str, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` and ``state`` to the folder ``path``, replacing it atomically."""
    from safetensors.torch import save_file

    with atomic_directory(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(tmp, TENSORS))
        write_json_atomic(os.path.join(tmp, STATE), state)


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a folder written by :func:`save_checkpoint`."""
    tensor_file, state_file = os.path.join(path, TENSORS), os.path.join(path, STATE)
    for needed in (tensor_file, state_file):
        if not os.path.isfile(needed):
            raise HastenError(f"{needed}: checkpoint file not found (expected a folder written by hasten)")
    return read_safetensors(tensor_file), read_json(state_file)


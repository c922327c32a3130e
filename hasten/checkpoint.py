"""Checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint is a folder holding ``tensors.safetensors`` (model, EMA, optimiser moments, RNG
states) and ``state.json`` (step, optimiser hyper-parameters, anything else that is not a tensor).
It is written to a temporary folder and renamed into place, so a run killed while saving leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from hasten.errors import HastenError

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

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ckpt-", dir=parent)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(tmp, TENSORS))
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(state, f, indent=2)
        old = path + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a folder written by :func:`save_checkpoint`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_file, state_file = os.path.join(path, TENSORS), os.path.join(path, STATE)
    for needed in (tensor_file, state_file):
        if not os.path.isfile(needed):
            raise HastenError(f"{needed}: checkpoint file not found (expected a folder written by hasten)")
    try:
        tensors = load_file(tensor_file)
    except (SafetensorError, OSError, ValueError) as e:
        raise HastenError(f"{tensor_file}: not a readable safetensors file ({e})") from e
    try:
        with open(state_file) as f:
            state = json.load(f)
    except json.JSONDecodeError as e:
        raise HastenError(f"{state_file}: not valid JSON ({e.msg})") from e
    return tensors, state


def write_json_atomic(path: str, data) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

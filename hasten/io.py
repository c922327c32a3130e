"""Reading and writing files safely: JSON and safetensors only (never pickle), atomic writes,
and errors that name the file and what was expected."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import torch
from torch import nn

from hasten.errors import HastenError


def read_json(path: str, dataclass_type=None) -> dict:
    """Read a JSON object; with ``dataclass_type``, reject keys that it does not have."""
    if not os.path.isfile(path):
        raise HastenError(f"{path}: file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise HastenError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise HastenError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if dataclass_type is not None:
        known = set(dataclass_type.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise HastenError(f"{path}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    return data


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str, path: str) -> None:
    """Rename the finished temporary file or folder ``tmp`` onto ``path``.

    ``mkstemp``/``mkdtemp`` create private (0600/0700) entries; they are given the permissions an
    ordinary ``open``/``mkdir`` would have had, so shipped models and written results stay readable.
    """
    mask = _current_umask()
    if os.path.isdir(tmp):
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def write_json_atomic(path: str, data) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}")
    fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    publish(tmp, path)
    return path


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupted file is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise HastenError(f"{path}: weights file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise HastenError(f"{path}: not a readable safetensors file ({e})") from e


def load_safetensors_into(module: nn.Module, path: str) -> None:
    """Load a safetensors file into ``module`` strictly, with errors that name the file."""
    state = read_safetensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise HastenError(f"{path}: weights do not match the model config ({first})") from e


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    A crash inside the block leaves ``path`` as it was (the previous checkpoint stays intact).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield tmp
        old = tmp + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        publish(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_module(module: nn.Module, path: str, config: dict) -> None:
    """Save ``module`` as ``path/model.safetensors`` + ``path/config.json``, atomically."""
    from safetensors.torch import save_file

    with atomic_directory(path) as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def machine_description() -> str:
    """'AMD EPYC ..., 2 cores, 2 torch threads': the machine a measurement ran on."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def fmt_optional(value, spec: str, missing: str = "-") -> str:
    """``format(value, spec)``, or ``missing`` for None (a metric that was not measured)."""
    return missing if value is None else format(value, spec)

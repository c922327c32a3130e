"""Policies shipped with hasten, and the export of a run's policy with where it came from.

A shipped policy is a policy folder under ``hasten/embedded/<model>/policies/<name>/``, addressed
as ``embedded:<model>-<name>`` (``embedded:shapes-budgets``, ``embedded:arith-cot``) wherever a
policy folder is accepted. Beside ``policy.safetensors`` and ``policy_config.json`` it holds::

    hasten_policy.json   model, recipe, command, source commit, machine, training time, final metrics
    recipe.yaml          the experiment exactly as the run used it (hasten train recipe.yaml reproduces it)

Adding one is exporting a run into that folder (``hasten policy export RUN --out FOLDER``); the
registry below finds it, nothing else changes.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

from hasten.errors import HastenError
from hasten.io import atomic_directory, read_json
from hasten.provenance import RUN_INFO, now

EMBEDDED_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "embedded")
PROVENANCE = "hasten_policy.json"
RECIPE = "recipe.yaml"
PREFIX = "embedded:"


def shipped_policies() -> dict[str, str]:
    """``embedded:<model>-<name>`` -> folder, for every shipped policy of this installation."""
    found = {}
    for meta in sorted(glob.glob(os.path.join(EMBEDDED_ROOT, "*", "policies", "*", PROVENANCE))):
        folder = os.path.dirname(meta)
        model = os.path.basename(os.path.dirname(os.path.dirname(folder)))
        found[f"{PREFIX}{model}-{os.path.basename(folder)}"] = folder
    return found


def resolve_policy_path(name_or_path: str) -> str:
    """A policy folder, or the folder of a shipped policy named ``embedded:...``."""
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    known = shipped_policies()
    if name_or_path not in known:
        raise HastenError(f"unknown shipped policy {name_or_path!r}: expected one of "
                          f"{', '.join(known) or '(none in this installation)'} (hasten policy list)")
    return known[name_or_path]


def policy_provenance(folder: str) -> dict:
    """The ``hasten_policy.json`` of a policy folder ({} for a folder without one)."""
    path = os.path.join(folder, PROVENANCE)
    return read_json(path) if os.path.isfile(path) else {}


def export_policy(run_dir: str, out: str) -> dict:
    """Copy ``run_dir``'s policy to ``out`` with its provenance and recipe; returns the provenance.

    ``out`` is written in one rename: a failed export leaves no half-written folder.
    """
    import yaml

    from hasten.trainers.grpo import CONFIG_FILE, METRICS_FILE, POLICY_DIR

    policy_dir = os.path.join(run_dir, POLICY_DIR)
    for path in (os.path.join(policy_dir, "policy_config.json"), os.path.join(run_dir, CONFIG_FILE),
                 os.path.join(run_dir, METRICS_FILE)):
        if not os.path.isfile(path):
            raise HastenError(f"{path}: not found; expected a run folder written by `hasten train`")
    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(run_dir, METRICS_FILE)) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise HastenError(f"{os.path.join(run_dir, METRICS_FILE)}: no iteration logged yet")
    run_info = read_json(os.path.join(run_dir, RUN_INFO)) if os.path.isfile(os.path.join(run_dir, RUN_INFO)) else {}
    sessions = run_info.get("sessions", [])
    last = lines[-1]
    provenance = {
        "model": config.get("generator"),
        "task": config.get("task"),
        "experiment": config.get("name"),
        "commands": [s.get("command") for s in sessions],
        "commit": sessions[0].get("commit", "unknown") if sessions else "unknown",
        "machine": sessions[0].get("machine", "") if sessions else "",
        "trained": sessions[-1].get("finished", sessions[-1].get("started")) if sessions else None,
        "train_minutes": round(run_info["train_s"] / 60, 1) if "train_s" in run_info else None,
        "iterations": last["iteration"] + 1,
        "first_reward": lines[0].get("charts/reward"),
        "final": {k: v for k, v in last.items() if k.startswith("charts/")},  # the last iteration's, on its training pairs
        "exported": now(),
    }
    if os.path.exists(out) and not os.path.isdir(out):
        raise HastenError(f"{out}: exists and is not a folder; expected a new or policy folder to write")
    with atomic_directory(out) as tmp:
        for name in os.listdir(policy_dir):
            shutil.copy2(os.path.join(policy_dir, name), os.path.join(tmp, name))
        shutil.copy2(os.path.join(run_dir, CONFIG_FILE), os.path.join(tmp, RECIPE))
        with open(os.path.join(tmp, PROVENANCE), "w") as f:
            json.dump(provenance, f, indent=2)
            f.write("\n")
    return provenance

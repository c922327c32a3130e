"""Where a result came from: the source commit, the machine and the command, recorded in a run folder
(``run.json``) and carried by an exported policy (``hasten_policy.json``)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import hasten
from hasten.io import read_json, write_json_atomic

RUN_INFO = "run.json"
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(hasten.__file__)))


def source_commit() -> str:
    """The git commit of the hasten source tree (``+dirty`` when it has uncommitted changes), or
    ``"unknown"`` for an installation that is not a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", SOURCE_ROOT, *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "hasten").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> str:
    """A one-line description of this machine (CPU count, processor, OS, Python, torch)."""
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_session(run_dir: str, resume: bool) -> dict:
    """Record in ``run_dir/run.json`` that a training session starts (its command, commit, machine).

    A resumed run keeps its earlier sessions; returns the record to pass to :func:`end_session`.
    """
    path = os.path.join(run_dir, RUN_INFO)
    info = read_json(path) if resume and os.path.isfile(path) else {"hasten": hasten.__version__, "sessions": []}
    info["sessions"].append({"command": "hasten " + " ".join(sys.argv[1:]), "commit": source_commit(),
                             "machine": machine(), "started": now()})
    write_json_atomic(path, info)
    return info


def end_session(run_dir: str, info: dict, iterations: int, wall_s: float) -> None:
    """Close the latest session of ``run.json`` with its iterations reached and wall-clock seconds."""
    info["sessions"][-1].update(finished=now(), iterations=iterations, wall_s=round(wall_s, 1))
    info["train_s"] = round(sum(s.get("wall_s", 0.0) for s in info["sessions"]), 1)
    write_json_atomic(os.path.join(run_dir, RUN_INFO), info)

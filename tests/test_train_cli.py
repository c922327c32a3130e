"""`hasten train`, `hasten policy eval` and `hasten sample --policy` as a user runs them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from hasten.cli import main

from test_cli import assert_one_line_error, run_cli

SMALL = ["--set", "grpo.iterations=2", "--set", "grpo.groups_per_iteration=2", "--set", "grpo.group_size=2",
         "--set", "train_pairs=2", "--set", "logging.checkpoint_every=1", "--set", "rollouts.threads=1"]


def _experiment(tmp_path, generator_path, changes=None):
    data = yaml.safe_load(open("experiments/quickstart.yaml"))
    data["generator"] = generator_path
    for key, value in (changes or {}).items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("change, fragments", [
    ({"grpo.epochz": 2}, ["grpo: unknown field(s) ['epochz']"]),
    ({"grpo.lr": "fast"}, ["grpo: lr: expected a number, got 'fast'"]),
    ({"grpo.group_size": 1}, ["group_size=1: GRPO needs at least 2 samples per group"]),
    ({"budget": 1.5}, ["budget=1.5: expected a FLOPs fraction in (0, 1]"]),
    ({"budget": 0}, ["budget=0"]),
    ({"generator": None}, ["generator: missing"]),
    ({"rewards.beauty": {"weight": 1.0}}, ["unknown reward 'beauty'"]),
    ({"policy.allowed_levels.cache_reuse": [5]}, ["allowed_levels.cache_reuse=[5]"]),
    ({"policy.allowed_levels": {"cache_reuse": [0]}},  # step_skip may now use all six levels
     ["init_probs.step_skip=[0.6, 0.3, 0.1]: expected 6 non-negative numbers with a positive sum"]),
], ids=["unknown-key", "wrong-type", "group-size", "budget-high", "budget-zero", "no-generator",
        "unknown-reward", "bad-level", "probs-short"])
def test_bad_experiment_files_are_one_line_errors_and_write_nothing(change, fragments, tiny_generator_dir, tmp_path):
    exp = _experiment(tmp_path, tiny_generator_dir, change)
    out = tmp_path / "runs"
    result = run_cli("train", exp, "--out", str(out), "--quiet")
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_missing_generator_path_writes_nothing(tmp_path):
    exp = _experiment(tmp_path, str(tmp_path / "no-model"))
    result = run_cli("train", exp, "--out", str(tmp_path / "runs"), "--quiet")
    assert_one_line_error(result, "no-model: generator not found")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quickstart_smoke_then_eval_and_sample(tiny_generator_dir, tiny_classifier_dir, tmp_path):
    exp = _experiment(tmp_path, tiny_generator_dir)
    out = tmp_path / "runs"
    result = run_cli("train", exp, "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    run = out / "quickstart"
    assert {"config.yaml", "metrics.jsonl", "checkpoint", "policy", "tb", "references"} <= set(os.listdir(run))
    assert len(open(run / "metrics.jsonl").readlines()) == 2
    # a second run of the same experiment gets its own folder; --resume continues the first
    assert run_cli("train", exp, "--out", str(out), "--quiet", *SMALL).returncode == 0
    assert (out / "quickstart-2").is_dir()
    more = run_cli("train", "--resume", str(run), "--set", "grpo.iterations=3", "--quiet")
    assert more.returncode == 0, more.stderr
    assert len(open(run / "metrics.jsonl").readlines()) == 3

    assert main(["policy", "eval", str(run / "policy"), "--classifier", tiny_classifier_dir, "--n", "8",
                 "--timing-samples", "1", "--timing-repeats", "1", "--quiet", "--json", str(tmp_path / "e.json"),
                 "--markdown", str(tmp_path / "e.md")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    names = [m["method"] for m in report["methods"]]
    assert names[:2] == ["full compute", "policy"] and any(n.startswith("uniform") for n in names)
    assert report["methods"][0]["speedup_wall_batch1"] == 1.0
    assert all(m["speedup_flops"] >= 1.0 for m in report["methods"])

    assert main(["report", str(run)]) == 0
    assert Image.open(run / "report.png").size[0] > 600
    last = json.loads(open(run / "metrics.jsonl").readlines()[-1])
    grid = np.array(last["steps/step_skip"])  # (the quickstart's 3 step-skip levels, steps): the report's heatmap
    assert grid.shape[0] == 3 and grid.shape[1] >= 4 and np.allclose(grid.sum(axis=0)[grid.sum(axis=0) > 0], 1.0)
    assert grid.sum(axis=0)[0] == pytest.approx(1.0)  # every row calls the model at the first step
    assert_one_line_error(run_cli("report", str(tmp_path)), "no metrics.jsonl")

    png = tmp_path / "side.png"
    assert main(["sample", "--generator", tiny_generator_dir, "--policy", str(run / "policy"), "--classes", "0,1",
                 "--n", "2", "--scale", "1", "--quiet", "--out", str(png)]) == 0
    assert Image.open(png).size[1] == 4 * 34 + 2  # two rows (full, policy) per class


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(run_cli("train", "--resume", str(tmp_path)), "not a hasten run folder")


def test_policy_for_another_family_is_refused(tiny_generator_dir, tmp_path):
    from hasten.policies import Policy, PolicyConfig

    Policy(PolicyConfig(family="sd3")).save_pretrained(str(tmp_path / "p"))
    result = run_cli("sample", "--generator", tiny_generator_dir, "--policy", str(tmp_path / "p"),
                     "--out", str(tmp_path / "x.png"))
    assert_one_line_error(result, "trained for the 'sd3' generator family")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_train_sigkilled_mid_run_then_resumed_matches_the_uninterrupted_run(tiny_generator_dir, tmp_path):
    """`hasten train` killed with SIGKILL (no cleanup at all) after a checkpoint, then `--resume`: the
    iterations after the checkpoint give the metrics of the run that was never interrupted."""
    import signal
    import time

    changes = {"train_pairs": 4, "grpo.iterations": 4, "grpo.groups_per_iteration": 2, "grpo.group_size": 2,
               "logging.checkpoint_every": 1, "logging.sample_every": 100}
    exp = _experiment(tmp_path, tiny_generator_dir, changes)
    straight = run_cli("train", exp, "--out", str(tmp_path / "a"), "--quiet")
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hasten.cli", "train", exp, "--out", str(tmp_path / "b"), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "b" / "quickstart" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli("train", "--resume", str(tmp_path / "b" / "quickstart"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr

    def lines(run):
        return [json.loads(line) for line in (tmp_path / run / "quickstart" / "metrics.jsonl").read_text().splitlines()]

    a, b = lines("a"), lines("b")
    assert [m["iteration"] for m in b] == [0, 1, 2, 3]
    skip = {"timing_s/rollout", "timing_s/update", "perf/episodes_per_s"}
    for expected, got in zip(a[2:], b[2:]):
        for key in expected:
            if key not in skip:
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-9, err_msg=key)
    sessions = json.loads((tmp_path / "b" / "quickstart" / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and "--resume" in sessions[1]["command"]

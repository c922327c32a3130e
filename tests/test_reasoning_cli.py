"""The reasoning commands as a user runs them: reasoner train / eval, train on a reasoning
experiment, compare --task reasoning; and their errors."""

import json
import os

import yaml

from test_cli import assert_one_line_error, run_cli


def test_reasoner_train_and_eval(tmp_path):
    out = tmp_path / "lm"
    result = run_cli("reasoner", "train", "--set", "steps=4", "--set", "hidden=16", "--set", "layers=1",
                     "--set", "heads=2", "--set", "intermediate=32", "--set", "batch_size=8", "--out", str(out),
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "model.safetensors").is_file() and (out / "tokenizer" / "vocab.json").is_file()
    meta = json.loads((out / "hasten_reasoner.json").read_text())
    assert meta["recipe"]["steps"] == 4 and meta["training"]["steps_done"] == 4
    result = run_cli("reasoner", "eval", str(out), "--n", "2", "--json", str(tmp_path / "eval.json"), "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "eval.json").read_text())
    assert set(data["by_difficulty"]) == {str(d) for d in range(1, 7)}
    assert data["no_chain"]["think_tokens"] == 0 and "| operations |" in result.stdout
    assert_one_line_error(run_cli("reasoner", "train", "--set", "hidden=30", "--set", "heads=4",
                                  "--out", str(tmp_path / "bad")), "hidden=30")
    assert not (tmp_path / "bad").exists()
    assert_one_line_error(run_cli("reasoner", "eval", str(tmp_path / "missing")), "not found")


def test_train_a_head_then_compare(tmp_path, tiny_reasoner_dir):
    experiment = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "experiments",
                                                  "reasoning_quickstart.yaml")))
    experiment.update(generator=tiny_reasoner_dir, train_pairs=12, name="rq")
    experiment["grpo"].update(iterations=2, groups_per_iteration=3, group_size=4)
    path = tmp_path / "rq.yaml"
    path.write_text(yaml.safe_dump(experiment))
    result = run_cli("train", str(path), "--out", str(tmp_path / "runs"), "--quiet")
    assert result.returncode == 0, result.stderr
    policy = tmp_path / "runs" / "rq" / "policy"
    assert (policy / "policy.safetensors").is_file()
    report = run_cli("report", str(tmp_path / "runs" / "rq"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "runs" / "rq" / "report.png").stat().st_size > 1000
    # hasten policy eval finds the head's task from its config: the greedy head vs the full chain
    result = run_cli("policy", "eval", str(policy), "--generator", tiny_reasoner_dir, "--n", "6",
                     "--json", str(tmp_path / "eval.json"), "--quiet")
    assert result.returncode == 0, result.stderr
    methods = json.loads((tmp_path / "eval.json").read_text())["methods"]
    assert [m["family"] for m in methods] == ["full", "hasten head"] and "| hasten head (greedy) |" in result.stdout
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    result = run_cli("compare", "--task", "reasoning", "--generator", tiny_reasoner_dir, "--policy", str(policy),
                     "--n", "2", "--fixed-steps", "0,2", "--deer-thresholds", "0.9", "--head-thresholds", "0.3",
                     "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"),
                     "--benchmarks-md", str(bench), "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    families = [m["family"] for m in data["methods"]]
    assert families == ["full", "fixed budget", "fixed budget", "DEER", "hasten head", "hasten head"]
    deer = data["methods"][3]
    assert deer["probe_tokens"] >= 0 and deer["total_tokens"] >= deer["think_tokens"]
    assert "half_the_tokens_within_1_point" in data["acceptance"]
    assert (tmp_path / "r.png").stat().st_size > 1000
    text = bench.read_text()
    assert "## Other" in text and "kept" in text and "--task reasoning" in text
    again = run_cli("compare", "--task", "reasoning", "--from-json", str(tmp_path / "r.json"), "--quiet")
    assert again.returncode == 0 and "hasten head (greedy)" in again.stdout
    assert_one_line_error(run_cli("compare", "--task", "reasoning", "--generator", tiny_reasoner_dir,
                                  "--policy", str(tmp_path / "nope")), "policy folder not found")
    assert_one_line_error(run_cli("compare", "--task", "reasoning", "--generator", tiny_reasoner_dir,
                                  "--deer-thresholds", "2"), "--deer-thresholds")

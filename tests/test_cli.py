import json
import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from hasten.cli import main

from conftest import TINY

COMMANDS = [[], ["generator"], ["generator", "train"], ["generator", "train-classifier"],
            ["generator", "eval"], ["generator", "info"], ["sample"], ["knobs"], ["knobs", "bench"],
            ["train"], ["policy"], ["policy", "eval"], ["report"], ["reasoner"], ["reasoner", "train"],
            ["reasoner", "eval"], ["compare"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "hasten")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: hasten" in capsys.readouterr().out


def run_cli(*args, env_extra=None):
    """The installed console script in a subprocess, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "hasten.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hasten: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_generator_path(tmp_path):
    result = run_cli("sample", "--generator", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png"))
    assert_one_line_error(result, "missing: generator not found", "embedded:shapes")
    assert not (tmp_path / "g.png").exists()


def test_unknown_class(tiny_generator_dir, tmp_path):
    result = run_cli("sample", "--generator", tiny_generator_dir, "--classes", "purple hexagon",
                     "--out", str(tmp_path / "g.png"))
    assert_one_line_error(result, "unknown class 'purple hexagon'", "red circle")


def test_corrupted_weights(tiny_generator_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_generator_dir, broken)
    (broken / "class_encoder" / "model.safetensors").write_bytes(b"\x00" * 100)
    result = run_cli("generator", "info", str(broken))
    assert_one_line_error(result, "model.safetensors: not a readable safetensors file")
    debug = run_cli("--debug", "generator", "info", str(broken))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_invalid_config_value_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = run_cli("generator", "train", "--set", "label_dropout=2", "--out", str(out))
    assert_one_line_error(result, "label_dropout=2", "[0, 1)")
    assert not out.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    result = run_cli("generator", "train", "--config", str(bad), "--out", str(out))
    assert_one_line_error(result, "bad.yaml: unknown field(s) ['stepz']")
    assert not out.exists()


def test_bad_argument_values_exit_non_zero(tmp_path):
    result = run_cli("sample", "--n", "0")
    assert result.returncode == 2 and "expected a positive integer" in result.stderr


def test_sample_writes_a_png_grid(tiny_generator_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["sample", "--generator", tiny_generator_dir, "--classes", "red circle,5", "--n", "3",
                 "--steps", "2", "--scale", "1", "--quiet", "--out", str(out)])
    assert code == 0
    width, height = Image.open(out).size
    assert height == 2 * 34 + 2 and width > 3 * 34
    assert "2 classes x 3 samples" in capsys.readouterr().out


def test_info_and_eval_write_json(tiny_generator_dir, tiny_classifier_dir, tmp_path):
    assert main(["generator", "info", tiny_generator_dir, "--json", str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["parameters"] > 0 and info["transformer_config"]["in_channels"] == 12
    assert os.path.samefile(info["path"], tiny_generator_dir)

    code = main(["generator", "eval", "--generator", tiny_generator_dir, "--classifier", tiny_classifier_dir,
                 "--n", "16", "--steps", "4", "--reduced-steps", "2,1", "--quiet",
                 "--json", str(tmp_path / "eval.json"), "--markdown", str(tmp_path / "eval.md")])
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 16 and 0 <= result["class_accuracy"] <= 1
    factors = result["factor_accuracy"]  # each word of the class: at least as often right as the class
    assert list(factors) == ["colour", "shape"] and min(factors.values()) >= result["class_accuracy"]
    assert [r["num_steps"] for r in result["reduced_steps"]] == [2, 1]
    assert result["reduced_steps"][0]["psnr_db"] > result["reduced_steps"][1]["psnr_db"]
    assert "| 2 | 0.500 |" in (tmp_path / "eval.md").read_text()


@pytest.mark.slow
def test_generator_train_command_end_to_end(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=4, batch_size=4, checkpoint_every=2)))
    result = run_cli("generator", "train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / "run" / "model" / "hasten_generator.json")
    again = run_cli("generator", "train", "--config", str(config), "--out", str(tmp_path / "run"),
                    "--resume", "--quiet")
    assert again.returncode == 0, again.stderr


def test_knobs_bench_reports_every_level(tiny_generator_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["knobs", "bench", "--models", tiny_generator_dir, "--repeats", "1", "--samples", "2",
                 "--quiet", "--json", str(out), "--markdown", str(tmp_path / "bench.md")]) == 0
    result = json.loads(out.read_text())
    (model,) = result["models"]
    levels = {(lv["knob"], lv["level"]): lv for lv in model["levels"]}
    assert set(levels) >= {("full", "-"), ("cache_reuse", "deep_half"), ("cache_reuse", "all_but_first"),
                           ("sparse_attention", "0.5"), ("sparse_attention", "0.25"), ("step_skip", "1"),
                           ("step_skip", "2")}
    assert levels[("step_skip", "1")]["model_calls"] == 14 and levels[("step_skip", "7")]["model_calls"] == 4
    assert levels[("cache_reuse", "all_but_first")]["flops_fraction"] <= levels[("cache_reuse", "deep_half")]["flops_fraction"] < 1
    assert all(lv["time_fraction"] > 0 for lv in model["levels"])
    assert "| cache_reuse | all_but_first |" in capsys.readouterr().out
    assert (tmp_path / "bench.md").read_text().startswith("Knob costs")


def test_knobs_bench_unknown_model_is_a_one_line_error():
    assert_one_line_error(run_cli("knobs", "bench", "--models", "no/such/model"), "no/such/model")

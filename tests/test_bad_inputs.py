"""The CLI on bad input: configs, overrides, model and policy folders, budgets and steps, output paths.

Each case asserts: exit status 2, no traceback, one line on stderr that names the field or the file,
and nothing written where the command would have written. The commands run in-process (``main``),
except one run as a user runs it (a subprocess), so that the suite stays fast.
"""

import json
import os
import shutil

import pytest
import yaml

from hasten.cli import main

from test_cli import assert_one_line_error, run_cli


def fails(capsys, args, *fragments):
    """``hasten ARGS`` fails with one line on stderr that holds every fragment; returns the line."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("hasten") and "error:" in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nothing_written(*paths):
    for path in paths:
        assert not os.path.exists(path), f"{path} was written"
        parent = os.path.dirname(str(path))
        if os.path.isdir(parent):
            assert not [n for n in os.listdir(parent) if n.startswith(".tmp")], os.listdir(parent)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_generator_dir, tiny_classifier_dir):
    """Broken model and policy folders, each beside a working original."""
    from hasten.envs.reasoning import observation_columns
    from hasten.policies import Policy, PolicyConfig
    from hasten.policies.cot import CoTLengthHead
    from hasten.policies.heads import REASONING_KNOBS

    root = tmp_path_factory.mktemp("bad")
    made = {"generator": tiny_generator_dir, "classifier": tiny_classifier_dir}
    policy = root / "policy"
    Policy(PolicyConfig(num_steps=6)).save_pretrained(str(policy))
    made["policy"] = str(policy)
    for name in ("truncated_policy", "malformed_policy", "unknown_field_policy", "mismatched_policy"):
        shutil.copytree(policy, root / name)
        made[name] = str(root / name)
    weights = root / "truncated_policy" / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "malformed_policy" / "policy_config.json").write_text('{"hidden": 64,')
    config = json.loads((policy / "policy_config.json").read_text())
    (root / "unknown_field_policy" / "policy_config.json").write_text(json.dumps({**config, "hiden": 32}))
    (root / "mismatched_policy" / "policy_config.json").write_text(json.dumps({**config, "hidden": 8}))
    cot = root / "cot_policy"
    CoTLengthHead(PolicyConfig(knobs=dict(REASONING_KNOBS), observation=observation_columns(8))).save_pretrained(str(cot))
    made["cot_policy"] = str(cot)
    for name in ("truncated_generator", "malformed_generator"):
        shutil.copytree(tiny_generator_dir, root / name)
        made[name] = str(root / name)
    transformer = root / "truncated_generator" / "transformer" / "diffusion_pytorch_model.safetensors"
    transformer.write_bytes(transformer.read_bytes()[:200])
    (root / "malformed_generator" / "hasten_generator.json").write_text("{not json")
    (root / "empty").mkdir()
    made["empty"] = str(root / "empty")
    (root / "a_file").write_text("not a folder")
    made["file"] = str(root / "a_file")
    return made


def experiment(tmp_path, generator, **changes):
    with open(os.path.join(os.path.dirname(__file__), "..", "experiments", "quickstart.yaml")) as f:
        data = yaml.safe_load(f)
    data.update(generator=generator, train_pairs=4, grpo={**data["grpo"], "iterations": 1, "groups_per_iteration": 2})
    data.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ----------------------------------------------------------------------------- experiment files and overrides
TRAIN_SETS = [
    ("grpo.iterations=0", "grpo.iterations=0"),
    ("budget=1.5", "budget=1.5"),
    ("grpo.group_size=1", "grpo.group_size=1"),
    ("rollouts.rows_per_batch=-1", "rollouts.rows_per_batch=-1"),
    ("grpo.max_minutes=-2", "grpo.max_minutes=-2"),
    ("grpo.lr=abc", "lr: expected a number"),
    ("grpo.iteratons=3", "iteratons"),
    ("rollouts.backend=mpi", "rollouts.backend='mpi'"),
    ("rewards.fidelity.metric=lpips", "lpips"),
    ("num_steps=-3", "num_steps"),
]


@pytest.mark.parametrize("override,fragment", TRAIN_SETS, ids=[o for o, _ in TRAIN_SETS])
def test_train_override_out_of_range(override, fragment, folders, tmp_path, capsys):
    fails(capsys, ["train", experiment(tmp_path, folders["generator"]), "--set", override, "--out",
                   tmp_path / "runs", "--quiet"], fragment)
    nothing_written(tmp_path / "runs")


def test_train_override_without_equals(folders, tmp_path, capsys):
    fails(capsys, ["train", experiment(tmp_path, folders["generator"]), "--set", "budget", "--out",
                   tmp_path / "runs"], "budget", "key=value")
    nothing_written(tmp_path / "runs")


def test_train_missing_experiment_file(tmp_path, capsys):
    fails(capsys, ["train", tmp_path / "nope.yaml", "--out", tmp_path / "runs"], "nope.yaml")
    nothing_written(tmp_path / "runs")


def test_train_malformed_yaml(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n  grpo: {")
    fails(capsys, ["train", tmp_path / "bad.yaml", "--out", tmp_path / "runs"], "bad.yaml")
    nothing_written(tmp_path / "runs")


def test_train_experiment_that_is_not_a_mapping(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- name: quickstart\n")
    fails(capsys, ["train", tmp_path / "list.yaml", "--out", tmp_path / "runs"], "list.yaml")
    nothing_written(tmp_path / "runs")


def test_train_generator_folder_missing(tmp_path, capsys):
    fails(capsys, ["train", experiment(tmp_path, str(tmp_path / "no-model")), "--out", tmp_path / "runs"],
          "no-model: generator not found")
    nothing_written(tmp_path / "runs")


def test_train_on_a_pipeline_folder_of_an_unsupported_family(tmp_path, capsys):
    folder = tmp_path / "pixart"
    for part in ("transformer", "scheduler", "vae"):
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    line = fails(capsys, ["train", experiment(tmp_path, str(folder)), "--out", tmp_path / "runs"],
                 "pipeline class 'PixArtSigmaPipeline' is not supported", "WanPipeline", "hasten.accelerate")
    assert "model_index.json" in line
    nothing_written(tmp_path / "runs")


def test_a_video_pipeline_with_a_frame_count_its_vae_cannot_take(tmp_path, capsys):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_families import make_pipe

    folder = tmp_path / "wan"
    make_pipe("wan", text=True).save_pretrained(str(folder))
    capsys.readouterr()  # (save_pretrained's progress bar)
    config = experiment(tmp_path, str(folder))
    fails(capsys, ["train", config, "--out", tmp_path / "runs", "--set", "generator_options.resolution=64",
                   "--set", "generator_options.frames=10", "--set", "generator_options.prompts=[a fox]",
                   "--set", "generator_options.device=cpu"],
          "generator_options.frames=10", "WanPipeline", "1 + a multiple of 4")
    nothing_written(tmp_path / "runs")


# ----------------------------------------------------------------------------- model and policy folders
def test_generator_folder_without_metadata(folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["empty"], "--out", tmp_path / "s.png"], "not a generator folder")
    nothing_written(tmp_path / "s.png")


def test_generator_with_truncated_weights(folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["truncated_generator"], "--n", 1, "--out", tmp_path / "s.png"],
          "diffusion_pytorch_model.safetensors")
    nothing_written(tmp_path / "s.png")


def test_generator_with_malformed_json(folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["malformed_generator"], "--out", tmp_path / "s.png"],
          "hasten_generator.json")
    nothing_written(tmp_path / "s.png")


@pytest.mark.parametrize("name,fragment", [
    ("truncated_policy", "policy.safetensors"),
    ("malformed_policy", "policy_config.json"),
    ("unknown_field_policy", "hiden"),
    ("mismatched_policy", "do not match policy_config.json"),
])
def test_broken_policy_folders(name, fragment, folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["generator"], "--policy", folders[name], "--n", 1,
                   "--out", tmp_path / "s.png"], fragment)
    nothing_written(tmp_path / "s.png")


def test_policy_folder_missing(folders, tmp_path, capsys):
    fails(capsys, ["policy", "eval", tmp_path / "no-policy", "--json", tmp_path / "e.json"], "no-policy",
          "policy folder not found")
    nothing_written(tmp_path / "e.json")


def test_unknown_shipped_policy(tmp_path, capsys):
    fails(capsys, ["sample", "--policy", "embedded:shapes-turbo", "--out", tmp_path / "s.png"],
          "embedded:shapes-turbo", "hasten policy list")
    nothing_written(tmp_path / "s.png")


def test_another_tasks_policy_for_sampling(folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["generator"], "--policy", folders["cot_policy"],
                   "--out", tmp_path / "s.png"], "cot_policy")
    nothing_written(tmp_path / "s.png")


def test_another_tasks_policy_in_compare(folders, tmp_path, capsys):
    fails(capsys, ["compare", "--generator", folders["generator"], "--policy", folders["cot_policy"], "--n", 2,
                   "--json", tmp_path / "c.json"], "cot_policy")
    nothing_written(tmp_path / "c.json")


# ----------------------------------------------------------------------------- budgets, steps, counts
def test_compare_budget_out_of_range(folders, tmp_path, capsys):
    fails(capsys, ["compare", "--generator", folders["generator"], "--policy", folders["policy"], "--budgets",
                   "0.5,1.5", "--n", 2, "--json", tmp_path / "c.json"], "1.5")
    nothing_written(tmp_path / "c.json")


def test_compare_uniform_steps_beyond_the_schedule(folders, tmp_path, capsys):
    fails(capsys, ["compare", "--generator", folders["generator"], "--uniform-steps", "3,40", "--n", 2,
                   "--classifier", folders["classifier"],
                   "--methods", "full,uniform", "--json", tmp_path / "c.json"], "40")
    nothing_written(tmp_path / "c.json")


def test_sample_budget_out_of_range(folders, tmp_path, capsys):
    fails(capsys, ["sample", "--generator", folders["generator"], "--policy", folders["policy"], "--budget", "-0.2",
                   "--n", 1, "--out", tmp_path / "s.png"], "budget")
    nothing_written(tmp_path / "s.png")


def test_sample_zero_steps(tmp_path, capsys):
    fails(capsys, ["sample", "--steps", 0, "--out", tmp_path / "s.png"], "--steps", "positive integer")
    nothing_written(tmp_path / "s.png")


def test_compare_unknown_method(folders, tmp_path, capsys):
    fails(capsys, ["compare", "--generator", folders["generator"], "--methods", "full,warp-drive", "--n", 2,
                   "--classifier", folders["classifier"],
                   "--json", tmp_path / "c.json"], "warp-drive")
    nothing_written(tmp_path / "c.json")


# ----------------------------------------------------------------------------- output paths: before any model loads
@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: an output check must come first."""
    import hasten.models
    import hasten.models.registry

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(hasten.models, "load_generator", refuse)
    monkeypatch.setattr(hasten.models.registry, "load_generator", refuse)


@pytest.mark.parametrize("args,fragment", [
    (["sample", "--out", "{file}/side.png"], "--out"),
    (["compare", "--n", "2", "--json", "{file}/c.json"], "--json"),
    (["compare", "--n", "2", "--markdown", "{file}/c.md"], "--markdown"),
    (["compare", "--n", "2", "--plot", "{dir}"], "--plot"),
    (["compare", "--n", "2", "--benchmarks-md", "{file}/B.md"], "--benchmarks-md"),
    (["train", "experiments/quickstart.yaml", "--out", "{file}"], "--out"),
    (["train", "--resume", "{dir}/missing-run"], "--resume"),
    (["policy", "eval", "embedded:shapes-quickstart", "--json", "{file}/e.json"], "--json"),
    (["generator", "eval", "--json", "{dir}"], "--json"),
    (["report", "{dir}", "--out", "{dir}"], "--out"),
    (["policy", "export", "{dir}", "--out", "{file}"], "--out"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_unwritable_outputs_fail_before_any_model_loads(args, fragment, no_model_loads, folders, tmp_path, capsys):
    args = [a.format(file=folders["file"], dir=tmp_path) for a in args]
    fails(capsys, args, fragment)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_folder(tmp_path, no_model_loads, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, ["sample", "--out", locked / "s.png"], "not writable")
    finally:
        locked.chmod(0o755)


def test_as_a_user_runs_it(tmp_path, folders):
    """The same checks in a subprocess: exit status, stderr, nothing written."""
    result = run_cli("sample", "--generator", folders["generator"], "--out", os.path.join(folders["file"], "s.png"))
    assert_one_line_error(result, "--out", "is a file, not a folder")

"""Shipped policies (embedded:NAME): listed, loadable by name everywhere a policy folder is, and
exportable from a run with their provenance."""

import json
import os

import pytest

import hasten
from hasten.cli import main
from hasten.errors import HastenError
from hasten.policies.shipped import export_policy, policy_provenance, resolve_policy_path, shipped_policies


def test_the_quickstart_policy_ships_with_its_provenance():
    known = shipped_policies()
    assert "embedded:shapes-quickstart" in known
    info = policy_provenance(known["embedded:shapes-quickstart"])
    assert info["model"] == "embedded:shapes" and len(info["commit"]) >= 7 and info["commands"]
    assert os.path.isfile(os.path.join(known["embedded:shapes-quickstart"], "recipe.yaml"))
    policy = hasten.load_policy("embedded:shapes-quickstart")
    assert policy.config.generator == "embedded:shapes" and policy.config.budget == pytest.approx(0.4)


def test_policy_list_names_each_shipped_policy(capsys):
    assert main(["policy", "list"]) == 0
    out = capsys.readouterr().out
    for name in shipped_policies():
        assert name in out


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(HastenError, match="embedded:shapes-quickstart"):
        resolve_policy_path("embedded:shapes-warp")
    assert resolve_policy_path("runs/x/policy") == "runs/x/policy"


def test_sample_with_a_shipped_policy_by_name(tmp_path, capsys):
    out = tmp_path / "side.png"
    assert main(["sample", "--policy", "embedded:shapes-quickstart", "--classes", "red circle", "--n", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and "fewer FLOPs" in capsys.readouterr().out


def test_export_of_a_run_carries_recipe_commit_and_metrics(tiny_generator_dir, tmp_path):
    from hasten.trainers.grpo import GRPOTrainer, load_experiment

    config = load_experiment("experiments/quickstart.yaml", [f"generator={tiny_generator_dir}", "train_pairs=2",
                                                              "grpo.iterations=1", "grpo.groups_per_iteration=1",
                                                              "grpo.group_size=2", "logging.sample_every=100"])
    config.logging.progress = False
    GRPOTrainer(config, str(tmp_path / "run")).train()
    info = export_policy(str(tmp_path / "run"), str(tmp_path / "shipped"))
    assert info["iterations"] == 1 and "charts/reward" in info["final"] and info["train_minutes"] is not None
    saved = json.loads((tmp_path / "shipped" / "hasten_policy.json").read_text())
    assert saved["commit"] == info["commit"]
    assert hasten.load_policy(str(tmp_path / "shipped")).config.num_steps == 6  # the tiny generator's schedule
    with pytest.raises(HastenError, match="not found"):
        export_policy(str(tmp_path / "no-run"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()



SHIPPED = {"embedded:shapes-quickstart": "embedded:shapes", "embedded:shapes-budgets": "embedded:shapes",
           "embedded:arith-cot": "embedded:arith", "embedded:clips-budgets": "embedded:clips"}


@pytest.mark.parametrize("name, model", sorted(SHIPPED.items()))
def test_each_promised_policy_ships_loadable_with_its_recipe(name, model):
    from hasten.tasks import task_of_policy

    folder = resolve_policy_path(name)
    info = policy_provenance(folder)
    assert info["model"] == model and len(info["commit"]) >= 7 and info["final"]
    assert os.path.isfile(os.path.join(folder, "recipe.yaml"))
    policy = hasten.load_policy(name)
    assert task_of_policy(policy.config).claims(model)
    if name.endswith("budgets"):  # one policy for any budget of its range
        assert policy.config.budget_conditioned


def test_the_shipped_cot_head_cuts_chains_and_keeps_answers():
    reasoner = hasten.load_reasoner("embedded:arith")
    head = hasten.load_policy("embedded:arith-cot")
    problems = reasoner.problems([2, 3, 4, 5, 6, 6], [7, 8, 9, 10, 11, 12])
    inputs = reasoner.tokenizer([p.prompt() for p in problems], return_tensors="pt", padding=True)
    with hasten.accelerate(reasoner, head, greedy=True) as acc:
        out = reasoner.model.generate(**inputs, max_new_tokens=400, do_sample=False)
    texts = reasoner.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "policy" in set(acc.stats["stopped_by"])  # the head stopped at least one chain itself
    assert sum(p.check(t.rsplit("A", 1)[-1]) for t, p in zip(texts, problems)) >= 5


@pytest.mark.slow
def test_compare_runs_the_shipped_budget_policy(tmp_path):
    out = tmp_path / "c.json"
    assert main(["compare", "--policy", "embedded:shapes-budgets", "--n", "2", "--budgets", "0.35",
                 "--methods", "uniform,policy", "--uniform-steps", "10", "--timing-repeats", "1",
                 "--timing-samples", "1", "--timing-batches", "1", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    policy = [m for m in result["methods"] if m["family"] == "learned policy"]
    assert len(policy) == 1 and policy[0]["speedup_flops"] > 2.0 and policy[0]["psnr_db"] > 25

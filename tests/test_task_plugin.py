"""A third process type (``tests/toy_task.py``: a countdown) added through the public registry only,
trained one GRPO iteration in-process and on Ray workers by the unchanged trainer and pools."""

import os

import numpy as np
import pytest
import torch

import hasten
from hasten.errors import HastenError
from hasten.tasks import TASKS, get_task, task_of_model
from hasten.trainers.grpo import GRPOTrainer, load_experiment

import toy_task  # noqa: F401  (registers the "countdown" task and its reward terms)

OVERRIDES = ["generator=toy:countdown", "grpo.iterations=1", "grpo.groups_per_iteration=4", "grpo.group_size=4",
             "train_pairs=8", "logging.progress=false", "rollouts.threads=1", "policy.hidden=8"]


def _train(run_dir, *extra):
    trainer = GRPOTrainer(load_experiment(None, [*OVERRIDES, *extra]), str(run_dir))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    metrics = []
    trainer.train(progress=False, on_iteration=lambda i, m: metrics.append(m))
    return trainer, before, metrics


def test_the_toy_task_is_found_through_the_registry():
    assert "countdown" in TASKS and get_task("countdown") is TASKS["countdown"]
    assert task_of_model("toy:countdown").name == "countdown"
    assert task_of_model("embedded:shapes").name == "denoising" and task_of_model("embedded:arith").name == "reasoning"
    with pytest.raises(HastenError, match="unknown task.*countdown.*denoising.*reasoning"):
        get_task("video")
    with pytest.raises(TypeError, match="abstract"):  # a task missing its env or model loader cannot register
        hasten.register_task(type("HalfTask", (hasten.Task,), {"name": "half"}))
    assert "half" not in TASKS


def test_the_toy_task_trains_one_grpo_iteration_in_process(tmp_path):
    trainer, before, metrics = _train(tmp_path / "run")
    assert trainer.task.name == "countdown" and metrics[0]["iteration"] == 0
    assert set(trainer.reward.terms) == {"toy_cost", "toy_overshoot"}  # the task's default rewards
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert np.isfinite(metrics[0]["losses/total"]) and metrics[0]["losses/grad_norm"] > 0
    assert 1 <= metrics[0]["charts/steps"] <= 12
    assert any(k.startswith("policy/stride/") for k in metrics[0])
    policy = hasten.load_policy(str(tmp_path / "run" / "policy"))  # the registry finds its class again
    assert list(policy.knobs) == ["stride"]
    from hasten.report import write_report

    assert os.path.isfile(write_report(str(tmp_path / "run")))


def test_the_toy_task_trains_one_grpo_iteration_on_ray(tmp_path):
    ray = pytest.importorskip("ray")
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}})
    try:
        local, _, expected = _train(tmp_path / "inprocess")
        trainer, before, metrics = _train(tmp_path / "ray", "rollouts.backend=ray", "rollouts.num_workers=2")
    finally:
        ray.shutdown()
    assert metrics[0]["perf/workers"] == 2
    assert metrics[0]["charts/reward"] == pytest.approx(expected[0]["charts/reward"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    for key, value in local.policy.state_dict().items():
        torch.testing.assert_close(trainer.policy.state_dict()[key], value)

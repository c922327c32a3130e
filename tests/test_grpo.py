import json
import math
import os

import numpy as np
import pytest
import torch

from hasten.errors import HastenError
from hasten.trainers.grpo import GRPOTrainer, group_advantages, grpo_loss, load_experiment, resume_config


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), group_size=3, eps=1e-4)
    assert adv.tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0], abs=1e-6)
    # Dr. GRPO: no division by the group's std, so a group that differs by 0.02 keeps advantages of 0.01
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 0.99, 1.01, 1.0]), group_size=3, scale=False)
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0, -0.01, 0.01, 0.0], abs=1e-6)


def test_grpo_loss_by_hand():
    logp_old = torch.zeros(3)
    logp = torch.tensor([math.log(1.5), math.log(0.5), math.log(0.5)], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    episode = torch.tensor([0, 0, 1])
    # ratios 1.5 (clipped to 1.2), 0.5 with A=+1 -> min(0.5, 0.8) = 0.5; 0.5 with A=-1 -> min(-0.5, -0.8) = -0.8
    # episode means 0.85 and -0.8 -> policy loss -(0.85 - 0.8) / 2 = -0.025
    entropy = torch.tensor([1.0, 2.0, 3.0])
    loss, stats = grpo_loss(logp, logp_old, advantages, episode, 2, clip=0.2, entropy=entropy, entropy_coef=0.1,
                            logp_ref=logp.detach(), kl_coef=0.5)
    assert stats["policy"] == pytest.approx(-0.025)
    assert stats["entropy"] == pytest.approx((1.5 + 3.0) / 2)
    assert stats["kl"] == pytest.approx(0.0)
    assert loss.item() == pytest.approx(-0.025 - 0.1 * 2.25)
    assert stats["clip_fraction"] == pytest.approx(1.0)
    loss.backward()
    # the clipped decision (ratio 1.5 > 1.2 with A > 0) gets no gradient
    assert logp.grad[0] == 0 and logp.grad[1] < 0 and logp.grad[2] == 0


def _config(generator_dir, *extra):
    return load_experiment(None, [f"generator={generator_dir}", "grpo.iterations=2", "grpo.groups_per_iteration=2",
                                  "grpo.group_size=3", "train_pairs=4", "logging.checkpoint_every=1",
                                  "logging.progress=false", "rollouts.threads=1", *extra])


def test_two_iterations_change_every_head_parameter_and_move_the_loss(tiny_generator_dir, tmp_path):
    trainer = GRPOTrainer(_config(tiny_generator_dir), str(tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    losses = []
    trainer.train(on_iteration=lambda i, m: losses.append(m["losses/total"]))
    after = trainer.policy.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    assert losses[0] != losses[1]
    assert os.path.isfile(tmp_path / "run" / "policy" / "policy.safetensors")
    disc_before = trainer.discriminator.net.state_dict()
    assert trainer.discriminator is not None and len(disc_before) > 0


def test_forecast_reaches_the_env_and_is_saved_with_the_policy(tiny_generator_dir, tmp_path):
    from hasten.policies import Policy

    trainer = GRPOTrainer(_config(tiny_generator_dir, "forecast=true", "forecast_space=noise", "grpo.iterations=1"),
                          str(tmp_path / "run"))
    assert trainer.env.forecast == "noise" and trainer.policy.config.sampler_forecast == "noise"
    trainer.train()
    assert trainer.env.rollout.forecast == "noise" and trainer.env.rollout.outputs.space == "noise"
    saved = Policy.from_pretrained(str(tmp_path / "run" / "policy")).config
    assert saved.forecast and saved.forecast_space == "noise"
    with pytest.raises(HastenError, match="forecast_space=.cubic."):
        _config(tiny_generator_dir, "forecast=true", "forecast_space=cubic")


def _metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_killed_and_resumed_run_continues_exactly(tiny_generator_dir, tmp_path):
    config = _config(tiny_generator_dir, "grpo.iterations=3")
    GRPOTrainer(config, str(tmp_path / "straight")).train()

    class Killed(Exception):
        pass

    def kill_after_second(iteration, metrics):
        if iteration == 1:
            raise Killed

    with pytest.raises(Killed):
        GRPOTrainer(config, str(tmp_path / "killed")).train(on_iteration=kill_after_second)
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:  # a line written after the checkpoint is dropped
        f.write(json.dumps({"iteration": 2, "charts/reward": 123.0}) + "\n")
    GRPOTrainer(config, str(tmp_path / "killed")).train(resume=True)
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "killed")
    assert [m["iteration"] for m in resumed] == [0, 1, 2]
    skip = {"timing_s/rollout", "timing_s/update", "perf/episodes_per_s"}
    for key in straight[2]:
        if key not in skip:
            np.testing.assert_allclose(resumed[2][key], straight[2][key], rtol=1e-6, atol=1e-9, err_msg=key)


def test_discriminator_can_be_switched_off_from_the_experiment(tiny_generator_dir, tmp_path):
    trainer = GRPOTrainer(_config(tiny_generator_dir, "rewards.discriminator.weight=0"), str(tmp_path / "run"))
    assert trainer.discriminator is None
    trainer.train()
    metrics = _metrics(tmp_path / "run")
    assert all("losses/discriminator" not in m and "rewards/discriminator/mean" not in m for m in metrics)
    assert all("rewards/fidelity/mean" in m and "rewards/cost/mean" in m for m in metrics)


def test_reward_curve_rises_in_tensorboard(tiny_generator_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A cheap-to-learn objective on the tiny model: every FLOP costs, so skipping pays.
    config = _config(tiny_generator_dir, "grpo.iterations=20", "grpo.groups_per_iteration=4", "grpo.group_size=4",
                     "grpo.lr=0.02", "train_pairs=8", "logging.checkpoint_every=20", "logging.sample_every=20",
                     "rewards={fidelity: {weight: 0.2}, cost: {weight: 2.0, mode: fraction}}")
    GRPOTrainer(config, str(tmp_path / "run")).train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    rewards = [e.value for e in events.Scalars("charts/reward")]
    assert len(rewards) == 20
    for tag in ("charts/speedup_flops", "charts/fidelity_psnr", "rewards/fidelity/mean", "losses/policy",
                "policy/entropy", "policy/step_skip/2/t0", "timing_s/rollout"):
        assert tag in events.Tags()["scalars"], tag
    assert "samples/full_top_vs_accelerated_bottom" in events.Tags()["images"]
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2])


def test_quickstart_experiment_file_is_valid():
    config = load_experiment("experiments/quickstart.yaml")
    assert config.generator == "embedded:shapes" and config.grpo.group_size >= 2 and 0 < config.budget <= 1


def test_budget_stages_move_the_drawn_budgets_at_their_iteration(tiny_generator_dir, tmp_path):
    config = _config(tiny_generator_dir, "budget_range=[0.5,0.9]", "budget_stages=[[1,0.1,0.2]]")
    trainer = GRPOTrainer(config, str(tmp_path / "run"))
    for iteration, (lo, hi) in [(0, (0.5, 0.9)), (1, (0.1, 0.2)), (5, (0.1, 0.2))]:
        budgets = trainer.iteration_plan(iteration)[2]
        assert ((budgets >= lo) & (budgets <= hi)).all(), iteration
        assert len(set(budgets.tolist())) == config.grpo.groups_per_iteration  # one budget per group
    for bad in ("[[1,0.3,0.2]]", "[[2,0.1,0.2],[1,0.1,0.2]]", "[[1,0.1]]", "[0.1,0.2]"):
        with pytest.raises(HastenError, match="budget_stages"):
            _config(tiny_generator_dir, f"budget_stages={bad}")


def test_the_budgets_experiment_is_one_run_with_a_lower_range_at_the_end():
    config = load_experiment("experiments/quickstart_budgets.yaml")
    assert config.budget_range and config.budget_stages
    assert config.budget_stages[-1][0] < config.grpo.iterations
    assert config.budget_range_at(config.grpo.iterations - 1)[0] < config.budget_range[0]
    assert config.forecast


def test_a_resume_keeps_its_overrides_for_the_next_resume(tiny_generator_dir, tmp_path):
    run = str(tmp_path / "run")
    GRPOTrainer(_config(tiny_generator_dir, "grpo.iterations=1"), run).train()
    extended = resume_config(run, ["grpo.iterations=2", "budget_stages=[[1,0.1,0.2]]", "forecast=true"])
    GRPOTrainer(extended, run).train(resume=True)
    again = resume_config(run)
    assert again.grpo.iterations == 2 and again.budget_stages == [[1, 0.1, 0.2]] and again.forecast

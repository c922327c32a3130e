"""Cost counted in measured time instead of analytic FLOPs (``cost_unit: time``)."""

import numpy as np
import pytest
import torch

from hasten.envs.denoising import DenoisingVectorEnv
from hasten.knobs.cost import measure_time_fractions, time_spent
from hasten.policies import Policy, PolicyConfig
from hasten.trainers.grpo import GRPOTrainer, load_experiment

TABLE = [[1.0, 0.9, 0.8], [0.6, 0.55, 0.5], [0.25, 0.2, 0.2]]


def test_time_spent_by_hand():
    decisions = np.array([[[0, 0, 0], [1, 2, 0], [-1, -1, -1], [0, 1, 2]]])  # full, abf, (skipped), deep_half@0.25
    assert time_spent(decisions, TABLE, num_steps=4).tolist() == pytest.approx([(1.0 + 0.25 + 0.5) / 4])


def test_measured_table_is_relative_to_a_full_call(tiny_generator):
    table = np.array(measure_time_fractions(tiny_generator, rows=1, repeats=2))
    assert table.shape == (3, 3) and table[0, 0] == 1.0 and (table > 0).all()


def test_env_observes_and_charges_time(tiny_generator):
    env = DenoisingVectorEnv(num_envs=1, generator=tiny_generator, budget=0.5, cost_unit="time", time_table=TABLE,
                             rewards={"cost": {"weight": 1.0, "mode": "fraction"}})
    env.reset(options={"conditions": [0], "seeds": [0]})
    obs, *_ = env.step(np.array([[0, 0, 0]]))
    assert obs[0, 4] == pytest.approx(1.0 / 6)
    obs, *_ = env.step(np.array([[0, 2, 0]]))
    assert obs[0, 4] == pytest.approx(1.25 / 6)
    total = 0.0
    while not env.rollout.done.all():
        obs, reward, *_ = env.step(np.array([[0, 2, 0]]))
        total += reward[0]
    assert total == pytest.approx(-(1.0 + 5 * 0.25) / 6)  # cost term in time units
    assert env.rollout.flops_fraction()[0] != pytest.approx((1.0 + 5 * 0.25) / 6)  # FLOPs counted apart


def test_policy_with_time_unit_needs_its_table():
    with pytest.raises(ValueError, match="cost_unit 'time' needs 3 x 3"):
        PolicyConfig(cost_unit="time")


def _recording_policy():
    policy = Policy(PolicyConfig(cost_unit="time", time_table=TABLE, init_probs={
        "step_skip": [1, 0, 0, 0, 0, 0], "cache_reuse": [0, 0, 1], "sparse_attention": [1, 0, 0]}))
    seen = []
    real_act = policy.act

    def recording_act(obs, **kwargs):
        seen.append(float(obs[0, 4]))
        return real_act(obs, **kwargs)

    policy.act = recording_act
    return policy, seen


def test_policy_observes_time_spent(tiny_generator):
    policy, seen = _recording_policy()
    tiny_generator.sample([0], [0], decisions=policy.decide(0.5))
    # first call computes fully (1.0), later calls reuse the cache (0.25 each, skips aside)
    assert seen[0] == 0.0 and seen[1] == pytest.approx(1.0 / 6)
    assert len(seen) == 6 and np.diff(seen[1:]) == pytest.approx([0.25 / 6] * 4)


def test_training_in_time_units_records_the_table(tiny_generator_dir, tmp_path):
    config = load_experiment(None, [f"generator={tiny_generator_dir}", "cost_unit=time", "grpo.iterations=1",
                                    "grpo.groups_per_iteration=1", "grpo.group_size=2", "train_pairs=1",
                                    "logging.progress=false", "rollouts.threads=1"])
    trainer = GRPOTrainer(config, str(tmp_path / "run"))
    metrics = []
    trainer.train(on_iteration=lambda i, m: metrics.append(m))
    assert "charts/speedup_time_est" in metrics[0]
    policy = Policy.from_pretrained(str(tmp_path / "run" / "policy"))
    assert policy.config.cost_unit == "time" and np.array(policy.config.time_table).shape == (3, 3)
    images, stats = trainer.generator.sample([0], [0], decisions=policy.decide())
    assert torch.isfinite(images).all()

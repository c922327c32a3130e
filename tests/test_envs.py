import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import hasten.envs  # noqa: F401  (registers the envs)
from hasten.envs.denoising import DenoisingVectorEnv
from hasten.errors import HastenError


def test_every_registered_env_passes_check_env(tiny_generator_dir, tiny_reasoner, tiny_dllm_dir):
    import hasten.tasks  # noqa: F401  (registers the plug-in tasks' envs)

    ids = [env_id for env_id in gymnasium.registry if env_id.startswith("hasten/")]
    assert {"hasten/Denoising-v0", "hasten/Reasoning-v0", "hasten/Unmasking-v0"} <= set(ids)
    model = {"hasten/Denoising-v0": {"generator": tiny_generator_dir}, "hasten/Reasoning-v0": {"reasoner": tiny_reasoner},
             "hasten/Unmasking-v0": {"model": tiny_dllm_dir}}
    for env_id in ids:
        env = gymnasium.make(env_id, disable_env_checker=True, **model[env_id])
        check_env(env.unwrapped, skip_render_check=True)


def _episode(env, seed, actions_seed):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(actions_seed)
    trace = [obs]
    rewards = np.zeros(env.num_envs)
    while not env.rollout.done.all():
        obs, reward, terminated, truncated, info = env.step(rng.integers(0, 3, size=(env.num_envs, 3)))
        trace.append(obs)
        rewards += reward
        assert not truncated.any()
    return np.stack(trace), rewards, env.images()


def test_vector_env_is_deterministic_for_a_fixed_seed(tiny_generator):
    env = gymnasium.make_vec("hasten/Denoising-v0", num_envs=4, vectorization_mode="vector_entry_point",
                             generator=tiny_generator)
    assert env.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.DISABLED
    a = _episode(env.unwrapped if hasattr(env, "unwrapped") else env, 3, 0)
    b = _episode(env.unwrapped if hasattr(env, "unwrapped") else env, 3, 0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2])
    assert env.observation_space.shape == (4, 7) and env.action_space.shape == (4, 3)


def test_rewards_arrive_once_at_termination_and_finished_rows_stay_frozen(tiny_generator):
    env = DenoisingVectorEnv(num_envs=2, generator=tiny_generator, budget=0.5)
    env.reset(options={"conditions": [0, 1], "seeds": [5, 6]})
    skip_all = np.array([[2, 0, 0], [0, 0, 0]])
    seen = np.zeros(2, dtype=int)
    while not env.rollout.done.all():
        before = env.rollout.x.clone()
        obs, reward, terminated, _, info = env.step(skip_all)
        seen += (reward != 0)
        if terminated[0] and not info["active"][0]:
            torch.testing.assert_close(env.rollout.x[0], before[0])  # no compute for a finished row
    assert seen.tolist() == [1, 1]
    # row 1 ran at full compute: its image is the reference (fidelity at the PSNR cap), 2x the budget
    total, terms = env.episode_reward(np.array([1]))
    assert terms["fidelity"].item() == pytest.approx(4.5) and terms["cost"].item() == pytest.approx(-1.0)
    # row 0 skipped: 1/3 of the model calls, under budget
    assert env.rollout.flops_fraction()[0] == pytest.approx(2 / 6)


def test_reset_mask_restarts_only_the_masked_rows(tiny_generator):
    env = DenoisingVectorEnv(num_envs=2, generator=tiny_generator)
    env.reset(options={"conditions": [0, 1], "seeds": [1, 2]})
    env.step(np.zeros((2, 3), dtype=int))
    index_before = env.rollout.index.clone()
    obs, info = env.reset(options={"conditions": [3, 3], "seeds": [9, 9], "reset_mask": [True, False]})
    assert env.rollout.index.tolist() == [0, int(index_before[1])]
    assert info["condition"].tolist() == [3, 1] and info["noise_seed"].tolist() == [9, 2]
    torch.testing.assert_close(env.rollout.x[0], tiny_generator.noise([9])[0])


def test_observation_tracks_cache_and_cost(tiny_generator):
    env = DenoisingVectorEnv(num_envs=1, generator=tiny_generator, budget=0.3)
    obs, _ = env.reset(options={"conditions": [0], "seeds": [0]})
    assert obs[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0])
    obs, *_ = env.step(np.array([[0, 0, 0]]))  # full call: cache ready
    assert obs[0, 6] == 1.0 and obs[0, 3] == pytest.approx(1 / 6) and obs[0, 4] == pytest.approx(1 / 6)
    obs, *_ = env.step(np.array([[0, 2, 0]]))  # reuse: since_full grows, block-0 change measured
    assert obs[0, 3] == pytest.approx(2 / 6) and obs[0, 2] > 0


def test_bad_budget_and_options_are_clear_errors(tiny_generator):
    with pytest.raises(HastenError, match="budget=1.5"):
        DenoisingVectorEnv(num_envs=1, generator=tiny_generator, budget=1.5)
    env = DenoisingVectorEnv(num_envs=2, generator=tiny_generator)
    with pytest.raises(HastenError, match="expected 2 of each"):
        env.reset(options={"conditions": [0], "seeds": [0]})
    with pytest.raises(HastenError, match="before reset"):
        DenoisingVectorEnv(num_envs=1, generator=tiny_generator).step(np.zeros((1, 3), dtype=int))

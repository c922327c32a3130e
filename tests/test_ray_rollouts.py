"""The Ray rollout pool on a local CPU cluster (``ray.init(num_cpus=2)``): same trajectories and
policy as the in-process pool, a worker SIGKILLed mid-iteration changes nothing, clear errors."""

import os
import signal

import numpy as np
import pytest
import torch

from hasten.errors import HastenError
from hasten.rollouts import TrajectoryBatch
from hasten.trainers.grpo import GRPOTrainer, load_experiment

ray = pytest.importorskip("ray")

ITERATIONS = 3


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _config(generator_dir, *extra):
    return load_experiment(None, [f"generator={generator_dir}", f"grpo.iterations={ITERATIONS}",
                                  "grpo.groups_per_iteration=4", "grpo.group_size=3", "train_pairs=8",
                                  "logging.progress=false", "logging.sample_every=100", "rollouts.threads=1",
                                  *extra])


def _train(config, run_dir, before_train=None):
    """Train; returns (trainer, the batch of every iteration, the metrics of every iteration)."""
    trainer = GRPOTrainer(config, run_dir)
    batches, metrics = [], []
    collect = trainer.pool.collect

    def recording_collect(*args, **kwargs):
        batch = collect(*args, **kwargs)
        batches.append(batch)
        return batch

    trainer.pool.collect = recording_collect
    if before_train is not None:
        before_train(trainer)
    trainer.train(progress=False, on_iteration=lambda i, m: metrics.append(m))
    return trainer, batches, metrics


@pytest.fixture(scope="module")
def inprocess_run(tiny_generator_dir, tmp_path_factory):
    # forecast: the actors must run the sampler the controller runs (the trajectories would differ)
    return _train(_config(tiny_generator_dir, "forecast=true"), str(tmp_path_factory.mktemp("inprocess") / "run"))


def _assert_same_trajectories(expected: TrajectoryBatch, got: TrajectoryBatch):
    for name in ("actions", "active", "decisions", "conditions", "seeds"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    for name in ("obs", "logp", "rewards", "flops_fraction", "cost_fraction", "budgets", "images", "references"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), atol=1e-4, err_msg=name)
    for term in expected.terms:
        np.testing.assert_allclose(got.terms[term], expected.terms[term], atol=1e-4, err_msg=term)


def test_unreachable_address_fails_before_any_work(tiny_generator_dir, tmp_path):
    # first in this module: the address is only used when Ray is not initialised yet
    assert not ray.is_initialized()
    run = tmp_path / "run"
    with pytest.raises(HastenError, match=r"rollouts.address='127.0.0.1:9'.*no Ray cluster answers"):
        GRPOTrainer(_config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.address=127.0.0.1:9"), str(run))
    with pytest.raises(HastenError, match="expected 'local', 'auto' or HOST:PORT"):
        GRPOTrainer(_config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.address=nowhere"), str(run))
    assert not run.exists() and not ray.is_initialized()


def test_ray_pool_gives_the_inprocess_trajectories_and_policy(ray_cluster, inprocess_run, tiny_generator_dir,
                                                              tmp_path):
    trainer, batches, metrics = _train(_config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.num_workers=2",
                                               "forecast=true"), str(tmp_path / "run"))
    ref_trainer, ref_batches, _ = inprocess_run
    assert len(batches) == len(ref_batches) == ITERATIONS
    for expected, got in zip(ref_batches, batches):
        _assert_same_trajectories(expected, got)
        assert {part["pid"] for part in got.extra["parts"]}.__len__() == 2  # both workers did a shard
    for key, value in ref_trainer.policy.state_dict().items():
        torch.testing.assert_close(trainer.policy.state_dict()[key], value, atol=1e-4, rtol=1e-4)
    assert all(m["perf/workers"] == 2 and m["perf/worker_restarts"] == 0 for m in metrics)
    assert all(0 < m["perf/worker_utilisation"] <= 1.0 + 1e-6 for m in metrics)
    # references the workers computed came back to the controller's cache, on disk for a resume
    assert os.path.isfile(tmp_path / "run" / "references" / "index.json")
    assert trainer.pool.workers == []  # closed at the end of the run


def test_a_worker_killed_mid_iteration_changes_nothing(ray_cluster, inprocess_run, tiny_generator_dir, tmp_path):
    kills = []

    def kill_during_iteration_two(pool):
        if pool.version == 2:  # the second iteration's shards were just sent: kill the first worker now
            os.kill(pool.pids[0], signal.SIGKILL)
            kills.append(pool.pids[0])

    trainer, batches, metrics = _train(
        _config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.num_workers=2", "forecast=true"),
        str(tmp_path / "run"),
        before_train=lambda t: setattr(t.pool, "on_dispatch", kill_during_iteration_two))
    assert kills, "the kill hook never ran"
    assert [m["perf/worker_restarts"] for m in metrics] == [0, 1, 0]
    assert metrics[-1]["perf/workers"] == 2
    _, ref_batches, _ = inprocess_run
    assert len(batches) == ITERATIONS
    for expected, got in zip(ref_batches, batches):  # nothing lost, nothing counted twice
        _assert_same_trajectories(expected, got)


def test_a_pipeline_generator_runs_on_ray_workers(ray_cluster, tmp_path, monkeypatch):
    """A diffusers pipeline folder with generator_options (a relative prompts file) on 2 actors."""
    from tiny_pipelines import SIZE, make_tiny_pipeline

    make_tiny_pipeline("sd3", guidance_embeds=False, seed=0).save_pretrained(str(tmp_path / "sd3"))
    monkeypatch.chdir(tmp_path)  # the prompts file is relative to here; actors get it made absolute
    (tmp_path / "prompts.txt").write_text("a red fox\na blue cube\n")
    overrides = ["generator=sd3", "generator_options.prompts_file=prompts.txt", f"generator_options.resolution={SIZE}",
                 "generator_options.dtype=float32", "generator_options.device=cpu",
                 "generator_options.max_sequence_length=24", "num_steps=6", "grpo.iterations=1",
                 "grpo.groups_per_iteration=2", "grpo.group_size=2", "train_pairs=2",
                 "rewards.discriminator.channels=4", "logging.progress=false", "rollouts.threads=1"]
    _, expected, _ = _train(load_experiment(None, overrides), str(tmp_path / "inprocess"))
    _, got, metrics = _train(load_experiment(None, [*overrides, "rollouts.backend=ray", "rollouts.num_workers=2"]),
                             str(tmp_path / "ray"))
    _assert_same_trajectories(expected[0], got[0])
    assert metrics[0]["perf/workers"] == 2


def test_the_reasoning_env_runs_on_ray_workers(ray_cluster, tiny_reasoner_dir, tmp_path):
    """hasten/Reasoning-v0 on 2 actors: the in-process pool's trajectories, rewards and head; the full
    chains the actors computed come back to the controller."""
    overrides = [f"generator={tiny_reasoner_dir}", "train_pairs=8", "generator_options.max_steps=6",
                 "generator_options.max_think_tokens=60", "logging.progress=false", "rollouts.threads=1",
                 "policy.init_probs.think=[0.7,0.3]", "grpo.iterations=2", "grpo.groups_per_iteration=4",
                 "grpo.group_size=3", "rewards.length.mode=cap"]
    ref_trainer, expected, _ = _train(load_experiment(None, overrides), str(tmp_path / "inprocess"))
    trainer, got, metrics = _train(load_experiment(None, [*overrides, "rollouts.backend=ray",
                                                          "rollouts.num_workers=2"]), str(tmp_path / "ray"))
    assert len(got) == len(expected) == 2
    for e, g in zip(expected, got):
        _assert_same_trajectories(e, g)
        for key in ("correct", "think_tokens", "full_tokens", "steps"):
            np.testing.assert_array_equal(g.extra[key], e.extra[key], err_msg=key)
        assert len({part["pid"] for part in g.extra["parts"]}) == 2
    for key, value in ref_trainer.policy.state_dict().items():
        torch.testing.assert_close(trainer.policy.state_dict()[key], value, atol=1e-4, rtol=1e-4)
    assert metrics[-1]["perf/workers"] == 2 and 0 <= metrics[-1]["charts/accuracy"] <= 1
    assert set(map(tuple, np.stack([got[0].conditions, got[0].seeds], 1).tolist())) <= \
        set(trainer.env.full_chains.known_chains)
    assert trainer.pool.workers == []


def test_concatenated_shards_equal_the_whole_batch(tiny_generator):
    from hasten.envs.denoising import DenoisingVectorEnv
    from hasten.policies import Policy, PolicyConfig
    from hasten.rollouts import InProcessPool

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(init_probs={"step_skip": [0.4, 0.2, 0.1, 0.1, 0.1, 0.1]}))
    conditions, seeds = [0, 1, 2, 3], [10, 11, 12, 13]
    budgets, row_seeds = np.full(4, 0.4), np.arange(4) + 100

    def collect(rows):
        env = DenoisingVectorEnv(num_envs=len(rows), generator=tiny_generator, rewards={"cost": {"weight": 1.0}})
        return InProcessPool(lambda n: env).collect(policy, [conditions[i] for i in rows], [seeds[i] for i in rows],
                                          budgets[rows], row_seeds[rows])

    whole = collect([0, 1, 2, 3])
    joined = TrajectoryBatch.concatenate([collect([0]), collect([1, 2]), collect([3])])
    _assert_same_trajectories(whole, joined)
    assert joined.obs.shape == whole.obs.shape
    # the in-process pool's own batching (rollouts.rows_per_batch): whole groups, same trajectories
    sizes = []

    def make_env(n):
        sizes.append(n)
        return DenoisingVectorEnv(num_envs=n, generator=tiny_generator, rewards={"cost": {"weight": 1.0}})

    pool = InProcessPool(make_env, rows_per_batch=3, group_size=2)
    assert pool.batches(4) == [slice(0, 2), slice(2, 4)]
    batched = pool.collect(policy, conditions, seeds, budgets, row_seeds)
    assert sizes == [2]  # one env of two rows, run twice
    _assert_same_trajectories(whole, batched)


def test_more_gpus_or_cpus_than_the_cluster_has_fail_before_any_work(ray_cluster, tiny_generator_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(HastenError, match=r"num_gpus_per_worker=1.0: no node .* has that many GPUs"):
        GRPOTrainer(_config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.num_gpus_per_worker=1"), str(run))
    with pytest.raises(HastenError, match=r"num_workers=3 x num_cpus_per_worker=1.0 needs 3 CPUs.* has 2"):
        GRPOTrainer(_config(tiny_generator_dir, "rollouts.backend=ray", "rollouts.num_workers=3"), str(run))
    assert not run.exists()


def test_rollout_config_rejects_bad_values():
    from hasten.trainers.grpo_config import RolloutConfig

    with pytest.raises(ValueError, match="expected 'inprocess' or 'ray'"):
        RolloutConfig(backend="dask")
    with pytest.raises(ValueError, match="num_workers=0"):
        RolloutConfig(num_workers=0)
    with pytest.raises(ValueError, match="num_gpus_per_worker=-1"):
        RolloutConfig(num_gpus_per_worker=-1)


@pytest.mark.parametrize("changes, fragment", [
    (["rollouts.address=127.0.0.1:9"], "rollouts.address='127.0.0.1:9': no Ray cluster answers there"),
    (["rollouts.num_gpus_per_worker=1"], "rollouts.num_gpus_per_worker=1.0: no node of the Ray cluster has that many"),
    (["rollouts.backend=dask"], "rollouts.backend='dask': expected 'inprocess' or 'ray'"),
], ids=["unreachable", "gpus", "backend"])
def test_cli_ray_errors_are_clear_and_write_nothing(changes, fragment, tiny_generator_dir, tmp_path):
    from test_cli import run_cli

    out = tmp_path / "runs"
    sets = [arg for change in changes for arg in ("--set", change)]
    result = run_cli("train", "experiments/ray_quickstart.yaml", "--set", f"generator={tiny_generator_dir}",
                     *sets, "--out", str(out), "--quiet")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # Ray itself may print a notice (token auth) before it
    assert last.startswith("hasten: error:") and fragment in last, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_rollouts_bench_cli_writes_json_and_table(tiny_generator_dir, tmp_path):
    import json

    from test_cli import run_cli

    exp = tmp_path / "exp.yaml"
    exp.write_text(f"generator: {tiny_generator_dir}\ntrain_pairs: 2\ngrpo: {{groups_per_iteration: 2, group_size: 2}}\n")
    result = run_cli("rollouts", "bench", str(exp), "--workers", "1", "--inprocess-threads", "1", "--iterations", "1",
                     "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "bench.md"), "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["backend"], r["workers"]) for r in data["results"]] == [("inprocess", 0), ("ray", 1)]
    assert all(r["episodes"] == 4 and r["episodes_per_s"] > 0 for r in data["results"])
    assert data["results"][1]["speedup_vs_1_worker"] == 1.0
    assert "| ray | 1 | 1 |" in (tmp_path / "bench.md").read_text()
    bad = run_cli("rollouts", "bench", str(exp), "--workers", "0")
    assert bad.returncode == 2 and "expected positive integers" in bad.stderr


def test_the_unmasking_env_runs_on_ray_workers(ray_cluster, tiny_dllm_dir, tmp_path):
    """hasten/Unmasking-v0 (a plug-in task) on 2 actors: the in-process pool's trajectories and head."""
    overrides = [f"generator={tiny_dllm_dir}", "train_pairs=8", "logging.progress=false", "rollouts.threads=1",
                 "grpo.iterations=2", "grpo.groups_per_iteration=4", "grpo.group_size=2"]
    path = "experiments/dllm_budgets.yaml"
    ref_trainer, expected, _ = _train(load_experiment(path, overrides), str(tmp_path / "inprocess"))
    trainer, got, metrics = _train(load_experiment(path, [*overrides, "rollouts.backend=ray", "rollouts.num_workers=2"]),
                                   str(tmp_path / "ray"))
    for e, g in zip(expected, got):
        _assert_same_trajectories(e, g)
        np.testing.assert_array_equal(g.extra["calls"], e.extra["calls"])
        assert len({part["pid"] for part in g.extra["parts"]}) == 2
    for key, value in ref_trainer.policy.state_dict().items():
        torch.testing.assert_close(trainer.policy.state_dict()[key], value, atol=1e-4, rtol=1e-4)
    assert metrics[-1]["perf/workers"] == 2 and 0 <= metrics[-1]["charts/accuracy"] <= 1

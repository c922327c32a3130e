"""GRPO for acceleration-policy heads against a frozen generator (DESIGN.md, "Training: GRPO").

The loop reads top to bottom, one iteration at a time:

    rollout    G episodes of each (class, noise) pair, decisions sampled from the policy
    reward     composite of fidelity, cost and the discriminator, at each episode's end
    advantage  (r - group mean) / (group std + eps)
    update     clipped-ratio objective over every decision of each trajectory, several passes,
               optional KL to the initial policy, entropy bonus; then the discriminator

A run folder ``runs/<name>/`` holds the resolved config, TensorBoard events, ``metrics.jsonl``,
the cached full-compute references, the checkpoint and the policy (``policy/``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time

import numpy as np
import torch

from hasten.config import from_dict, to_dict
from hasten.errors import HastenError
from hasten.knobs import KNOBS
from hasten.io import write_text_atomic
from hasten.policies.heads import Policy
from hasten.provenance import end_session, start_session
from hasten.trainers.grpo_config import ExperimentConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
POLICY_DIR = "policy"
TIME_BUCKETS = 4


# ----------------------------------------------------------------------------- the GRPO maths
def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """(N,) episode rewards, rows grouped consecutively by ``group_size`` -> (N,) advantages:
    ``(r - group mean) / (group std + eps)``, or ``r - group mean`` with ``scale=False`` (Dr. GRPO,
    Liu et al. 2025: dividing by the std blows tiny differences within a group up to unit size).

    Example:
        >>> group_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2, eps=0.0).tolist()
        [-0.7071067690849304, 0.7071067690849304, 0.0, 0.0]
    """
    groups = rewards.double().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if not scale:
        return (groups - mean).view(-1).float()
    std = groups.std(dim=1, keepdim=True)  # unbiased, as TRL's GRPO
    return ((groups - mean) / (std + eps)).view(-1).float()


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, episode: torch.Tensor,
              num_episodes: int, clip: float, entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
              logp_ref: torch.Tensor | None = None, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped-ratio GRPO objective over decisions (one row per decision).

    Each decision carries its episode's advantage; the clipped surrogate is averaged over the
    decisions of each episode, then over episodes (so long and short trajectories weigh the same).

    Args:
        logp, logp_old: (M,) log-probabilities under the current and the sampling policy.
        advantages: (N,) per episode; ``episode``: (M,) episode index of each decision.
        clip: ratio clip epsilon; entropy: (M,) for the bonus; logp_ref: (M,) for the KL (k3).

    Returns:
        (loss, {"policy": surrogate loss, "kl": ..., "entropy": ..., "clip_fraction": ...}).
    """
    ratio = torch.exp(logp - logp_old)
    adv = advantages[episode]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    counts = torch.zeros(num_episodes, dtype=logp.dtype).index_add_(0, episode, torch.ones_like(logp))
    per_decision_weight = 1.0 / (counts[episode] * num_episodes)
    policy_loss = -(surrogate * per_decision_weight).sum()
    loss = policy_loss
    stats = {"policy": policy_loss.item(), "clip_fraction": float(((ratio - 1).abs() > clip).float().mean())}
    if entropy is not None:
        mean_entropy = (entropy * per_decision_weight).sum()
        loss = loss - entropy_coef * mean_entropy
        stats["entropy"] = mean_entropy.item()
    if logp_ref is not None and kl_coef > 0:
        delta = logp_ref - logp
        kl = ((torch.exp(delta) - delta - 1) * per_decision_weight).sum()
        loss = loss + kl_coef * kl
        stats["kl"] = kl.item()
    return loss, stats


# ----------------------------------------------------------------------------- the trainer
class GRPOTrainer:
    """Trains a :class:`~hasten.policies.Policy` for a frozen generator with GRPO.

    Args:
        config: the experiment.
        run_dir: the run folder (created after every check passed).
        generator: an already loaded generator adapter (loaded from ``config.generator`` when None).
    """

    def __init__(self, config: ExperimentConfig, run_dir: str, generator=None):
        from hasten.rewards import build_reward
        from hasten.rollouts import InProcessPool, RayPool, RolloutSpec

        self.started = time.perf_counter()  # the run's wall clock (grpo.max_minutes) counts setup too
        self.config, self.run_dir = config, run_dir
        g = config.grpo
        if config.rollouts.threads:
            torch.set_num_threads(config.rollouts.threads)
        torch.manual_seed(config.seed)  # the policy's and the discriminator's initial weights
        # Everything that can fail on user input fails here, before the run folder exists.
        self.task = resolve_task(config)
        if not config.rewards:  # an experiment without reward terms gets its task's
            config.rewards = copy.deepcopy(self.task.default_rewards)
        self.reward = build_reward(config.rewards, where="rewards")
        self.task.check_rewards(self.reward, where="rewards")
        self.iteration = 0
        self.writer = None
        self.generator = generator if generator is not None else self.task.load_model(config.generator,
                                                                                       config.generator_options)
        setup = self.task.setup(config, self.generator, self.reward, run_dir)
        self.num_steps, self.guidance, self.pairs = setup.num_steps, setup.guidance, setup.pairs
        self.references = setup.references
        self.discriminator = self.reward.get("discriminator")
        self.policy = setup.policy
        self.initial_policy = copy.deepcopy(self.policy).requires_grad_(False) if g.kl_coef > 0 else None
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=g.lr, weight_decay=g.weight_decay)

        def make_env(n):
            return self.task.make_env(n, self.generator, self.reward, self.references, setup.env_options,
                                      group_size=g.group_size)

        rows = g.groups_per_iteration * g.group_size
        if config.rollouts.backend == "ray":
            spec = RolloutSpec(task=self.task.name, task_module=type(self.task).__module__,
                               generator=_local_path(config.generator),
                               generator_options=_worker_options(config.generator_options), rewards=config.rewards,
                               policy=to_dict(self.policy.config), env_options=setup.env_options,
                               threads=config.rollouts.threads, group_size=g.group_size)
            self.pool = RayPool(spec, config.rollouts, g.group_size, reward=self.reward, references=self.references)
            self.env = make_env(rows)  # the controller's view of the env (its options and references)
        else:
            self.pool = InProcessPool(make_env, rows_per_batch=config.rollouts.rows_per_batch, group_size=g.group_size)
            self.env = self.pool.env(self.pool.batches(rows)[0].stop)  # the env the first batch runs in

    # ------------------------------------------------------------------------- one iteration
    def iteration_plan(self, iteration: int):
        """The (conditions, seeds, budgets, row seeds) of an iteration: a function of (seed, iteration) only."""
        c, g = self.config, self.config.grpo
        rng = np.random.default_rng([c.seed, iteration])
        chosen = rng.choice(len(self.pairs), size=g.groups_per_iteration, replace=False)
        pairs = np.repeat(self.pairs[chosen], g.group_size, axis=0)
        lo_hi = c.budget_range_at(iteration)
        if lo_hi:
            budgets = np.repeat(rng.uniform(lo_hi[0], lo_hi[1], g.groups_per_iteration), g.group_size)
        else:
            budgets = np.full(len(pairs), c.budget)
        row_seeds = rng.integers(0, 2**62, size=len(pairs))
        return pairs[:, 0], pairs[:, 1], budgets, row_seeds

    def train_iteration(self, iteration: int) -> dict:
        g = self.config.grpo
        # rollout (the reward is computed by the env at each episode's end)
        t0 = time.perf_counter()
        conditions, seeds, budgets, row_seeds = self.iteration_plan(iteration)
        batch = self.pool.collect(self.policy, conditions, seeds, budgets, row_seeds)
        t1 = time.perf_counter()
        # advantage
        rewards = torch.from_numpy(batch.rewards)
        advantages = group_advantages(rewards, g.group_size, g.advantage_eps, scale=g.scale_rewards)
        # update
        update_stats = self.update(batch, advantages)
        if self.discriminator is not None:
            update_stats["discriminator"] = self.discriminator.update(torch.from_numpy(batch.references),
                                                                      torch.from_numpy(batch.images))
        t2 = time.perf_counter()
        return self.metrics(iteration, batch, advantages, update_stats, rollout_s=t1 - t0, update_s=t2 - t1)

    def update(self, batch, advantages: torch.Tensor) -> dict:
        """Several passes of the clipped objective over all decisions of the batch."""
        g = self.config.grpo
        t_idx, n_idx = np.nonzero(batch.active)
        obs = torch.from_numpy(batch.obs[t_idx, n_idx])
        actions = torch.from_numpy(batch.actions[t_idx, n_idx])
        logp_old = torch.from_numpy(batch.logp[t_idx, n_idx])
        episode = torch.from_numpy(n_idx)
        logp_ref = None
        if self.initial_policy is not None:
            with torch.no_grad():
                logp_ref, _ = self.initial_policy.evaluate(obs, actions)
        self.policy.train()
        stats: dict = {}
        for _ in range(g.epochs):
            logp, entropy = self.policy.evaluate(obs, actions)
            loss, stats = grpo_loss(logp, logp_old, advantages, episode, batch.num_episodes, g.clip,
                                    entropy=entropy, entropy_coef=g.entropy_coef, logp_ref=logp_ref,
                                    kl_coef=g.kl_coef)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), g.max_grad_norm))
            self.optimizer.step()
            stats["loss"] = loss.item()
        self.policy.eval()
        return stats

    def metrics(self, iteration, batch, advantages, update_stats, rollout_s, update_s) -> dict:
        m = {"iteration": iteration, "charts/reward": float(batch.rewards.mean())}
        m.update(self.task.metrics(batch))
        m.update({
            "losses/policy": update_stats["policy"],
            "losses/total": update_stats["loss"],
            "losses/grad_norm": update_stats["grad_norm"],
            "policy/entropy": update_stats.get("entropy", float("nan")),
            "policy/clip_fraction": update_stats["clip_fraction"],
            "policy/advantage_abs": float(advantages.abs().mean()),
            "timing_s/rollout": rollout_s,
            "timing_s/update": update_s,
            "perf/episodes_per_s": batch.num_episodes / max(rollout_s, 1e-9),
            **self.pool.stats(),
        })
        if self.config.cost_unit == "time":
            m["charts/time_fraction_est"] = float(batch.cost_fraction.mean())
            m["charts/speedup_time_est"] = float(1.0 / batch.cost_fraction.mean())
        if "kl" in update_stats:
            m["losses/kl"] = update_stats["kl"]
        if "discriminator" in update_stats:
            m["losses/discriminator"] = update_stats["discriminator"]
        for name, values in batch.terms.items():
            m[f"rewards/{name}/mean"] = float(np.mean(values))
            m[f"rewards/{name}/std"] = float(np.std(values))
        m.update(decision_frequencies(batch.decisions, self.policy.knobs))
        m.update(decisions_per_step(batch.decisions, self.policy.knobs))
        return m

    # ------------------------------------------------------------------------- the run
    def train(self, resume: bool = False, progress: bool = True, on_iteration=None) -> str:
        """Run (or continue) the iterations; returns the policy folder.

        ``on_iteration(iteration, metrics)`` is called after each iteration (and its checkpoint).
        """
        from torch.utils.tensorboard import SummaryWriter

        c = self.config
        os.makedirs(self.run_dir, exist_ok=True)
        if resume:
            self.load_checkpoint()
        import yaml

        session = start_session(self.run_dir, resume)
        earlier_s = sum(s.get("wall_s", 0.0) for s in session["sessions"][:-1])

        # also on resume: its --set overrides (more iterations, a later budget stage) hold for the next resume too
        write_text_atomic(os.path.join(self.run_dir, CONFIG_FILE), yaml.safe_dump(to_dict(c), sort_keys=False))
        _truncate_metrics(os.path.join(self.run_dir, METRICS_FILE), self.iteration)
        self.writer = SummaryWriter(os.path.join(self.run_dir, "tb"), purge_step=self.iteration if resume else None)
        if not resume:
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(to_dict(c), sort_keys=False) + "\n```", 0)
        iterations = range(self.iteration, c.grpo.iterations)
        bar = None
        if progress and c.logging.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.grpo.iterations, initial=self.iteration, desc=f"train {c.name}", dynamic_ncols=True)
        try:
            for iteration in iterations:
                m = self.train_iteration(iteration)
                self.iteration = iteration + 1
                self.log(iteration, m)
                if (iteration + 1) % c.logging.sample_every == 0 or iteration == 0:
                    self.log_samples(iteration)
                if self.iteration % c.logging.checkpoint_every == 0 or self.iteration == c.grpo.iterations:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**self.task.progress(m))
                if on_iteration is not None:
                    on_iteration(iteration, m)
                elapsed_min = (earlier_s + time.perf_counter() - self.started) / 60
                if c.grpo.max_minutes and elapsed_min >= c.grpo.max_minutes and self.iteration < c.grpo.iterations:
                    self.save_checkpoint()
                    logger.warning("grpo.max_minutes=%g reached after %d of %d iterations: the policy of iteration "
                                   "%d is saved", c.grpo.max_minutes, self.iteration, c.grpo.iterations, self.iteration)
                    break
        finally:
            if bar is not None:
                bar.close()
            self.writer.close()
            self.pool.close()
            end_session(self.run_dir, session, self.iteration, time.perf_counter() - self.started)
        return os.path.join(self.run_dir, POLICY_DIR)

    def log(self, iteration: int, m: dict) -> None:
        for key, value in m.items():  # scalars to TensorBoard; all of it (per-step grids too) to metrics.jsonl
            if key != "iteration" and np.isscalar(value) and np.isfinite(value):
                self.writer.add_scalar(key, value, iteration)
        with open(os.path.join(self.run_dir, METRICS_FILE), "a") as f:
            f.write(json.dumps(m) + "\n")

    def log_samples(self, iteration: int) -> None:
        """What the greedy policy makes of a few training pairs (the task's picture or text)."""
        self.task.log_samples(self, iteration)

    # ------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        from hasten.checkpoint import optimizer_to_flat, save_checkpoint

        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        optim_tensors, optim_meta = optimizer_to_flat(self.optimizer, "optim")
        tensors.update(optim_tensors)
        state = {"iteration": self.iteration, "optim": optim_meta, "references": self.references.shards}
        tensors["rng.torch"] = torch.get_rng_state()
        if self.initial_policy is not None:
            tensors.update({f"initial_policy.{k}": v for k, v in self.initial_policy.state_dict().items()})
        if self.discriminator is not None:
            tensors.update({f"disc.{k}": v for k, v in self.discriminator.net.state_dict().items()})
            disc_tensors, disc_meta = optimizer_to_flat(self.discriminator.optimizer, "disc_optim")
            tensors.update(disc_tensors)
            state["disc_optim"] = disc_meta
        save_checkpoint(os.path.join(self.run_dir, CHECKPOINT_DIR), tensors, state)
        self.policy.save_pretrained(os.path.join(self.run_dir, POLICY_DIR))

    def load_checkpoint(self) -> None:
        from hasten.checkpoint import load_checkpoint, optimizer_from_flat

        tensors, state = load_checkpoint(os.path.join(self.run_dir, CHECKPOINT_DIR))

        def part(prefix):
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        self.policy.load_state_dict(part("policy"))
        optimizer_from_flat(self.optimizer, tensors, state["optim"], "optim")
        if self.initial_policy is not None:
            self.initial_policy.load_state_dict(part("initial_policy"))
        if self.discriminator is not None:
            if "disc_optim" not in state:
                raise HastenError(f"{self.run_dir}: the checkpoint has no discriminator; the config asks for one")
            self.discriminator.net.load_state_dict(part("disc"))
            optimizer_from_flat(self.discriminator.optimizer, tensors, state["disc_optim"], "disc_optim")
        torch.set_rng_state(tensors["rng.torch"])
        self.iteration = int(state["iteration"])


def _local_path(path: str) -> str:
    """An existing relative path made absolute (a Ray actor may run in another folder); names pass as they are."""
    return os.path.abspath(path) if path and os.path.exists(path) else path


def _worker_options(options: dict) -> dict:
    """Generator options for Ray actors, with a relative ``prompts_file`` / ``problems_file`` made absolute."""
    options = dict(options)
    for name in ("prompts_file", "problems_file"):
        if options.get(name):
            options[name] = _local_path(options[name])
    return options


def resolve_task(config: ExperimentConfig):
    """The :class:`~hasten.tasks.Task` of ``config.task``, with ``auto`` resolved from the generator."""
    from hasten.tasks import task_of_model

    return task_of_model(config.generator, config.task)


def decision_frequencies(decisions: np.ndarray, knobs: dict | None = None) -> dict:
    """``policy/<knob>/<level>/t<bucket>``: share of decisions at each level, per quarter of the
    schedule (reasoning: of the chain's step limit)."""
    knobs = knobs or {k.name: list(k.levels) for k in KNOBS}
    n, steps, _ = decisions.shape
    out = {}
    bounds = np.linspace(0, steps, TIME_BUCKETS + 1).round().astype(int)
    for b in range(TIME_BUCKETS):
        window = decisions[:, bounds[b]:bounds[b + 1]]
        calls = window[..., 0] >= 0
        total = max(int(calls.sum()), 1)
        for k, (name, levels) in enumerate(knobs.items()):
            for level, value in enumerate(levels):
                out[f"policy/{name}/{value}/t{b}"] = float((window[..., k][calls] == level).sum() / total)
    return out


def decisions_per_step(decisions: np.ndarray, knobs: dict | None = None) -> dict:
    """``steps/<knob>``: (levels, steps) grid of the share of each level among the rows that call the
    model at each schedule position (a column of zeros: no row called there); ``hasten report`` draws it."""
    knobs = knobs or {k.name: list(k.levels) for k in KNOBS}
    calls = decisions[..., 0] >= 0  # (n, steps)
    total = np.maximum(calls.sum(axis=0), 1)
    return {f"steps/{name}": [np.round(((decisions[..., k] == level) & calls).sum(axis=0) / total, 4).tolist()
                              for level in range(len(levels))]
            for k, (name, levels) in enumerate(knobs.items())}


def _truncate_metrics(path: str, iteration: int) -> None:
    """Drop metric lines of iterations >= ``iteration`` (logged after the checkpoint a resumed run starts from)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["iteration"] < iteration]
    write_text_atomic(path, "".join(lines))


# ----------------------------------------------------------------------------- entry points
def load_experiment(path: str | None, overrides: list[str] | None = None) -> ExperimentConfig:
    from hasten.config import apply_overrides, load_document

    data = load_document(path) if path else {}
    if "rewards" not in data:  # so that --set rewards.discriminator.weight=0 edits the default terms
        from hasten.tasks import task_of_model

        given = apply_overrides(copy.deepcopy(data), overrides)  # the generator may come from --set
        task = task_of_model(str(given.get("generator", "")), str(given.get("task", "auto")))
        data["rewards"] = copy.deepcopy(task.default_rewards)
    data = apply_overrides(data, overrides)
    return from_dict(ExperimentConfig, data, source=path or "experiment")


def new_run_dir(root: str, name: str) -> str:
    """``root/name``, or ``root/name-2``, ``-3``... when it exists (a finished run is never overwritten)."""
    path, k = os.path.join(root, name), 2
    while os.path.exists(path):
        path, k = os.path.join(root, f"{name}-{k}"), k + 1
    return path


def train(config: ExperimentConfig, run_dir: str, resume: bool = False, progress: bool = True,
          on_iteration=None, generator=None) -> str:
    """Train (or, ``resume``, continue) a policy; returns the policy folder."""
    trainer = GRPOTrainer(config, run_dir, generator=generator)
    return trainer.train(resume=resume, progress=progress, on_iteration=on_iteration)


def resume_config(run_dir: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The resolved config saved in a run folder (``--set`` may extend ``grpo.iterations``)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise HastenError(f"{run_dir}: not a hasten run folder (no {CONFIG_FILE}); expected runs/<name>")
    return load_experiment(path, overrides)

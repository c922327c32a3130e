"""The experiment file of ``hasten train``: one dataclass per section, every field typed, defaulted
and explained; cross-field checks fail with the numbers and the fix (TRL's ``grpo_config.py``).

Example (``experiments/quickstart.yaml``)::

    name: quickstart
    generator: embedded:shapes
    budget: 0.4
    grpo: {iterations: 48, groups_per_iteration: 8, group_size: 8, lr: 0.02}
    rewards:
      fidelity: {weight: 1.0}
      cost: {weight: 4.0, mode: overshoot}
      discriminator: {weight: 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hasten.knobs import FORECAST_SPACES
from hasten.policies.heads import PolicyConfig
from hasten.tasks import TASKS


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimization of the heads (Shao et al. 2024, DeepSeekMath)."""

    iterations: int = 48  # training iterations (rollout -> reward -> advantage -> update)
    groups_per_iteration: int = 8  # distinct (class, noise) pairs per iteration
    group_size: int = 8  # rollouts of the same pair with sampled decisions (G)
    epochs: int = 4  # optimisation passes over each iteration's batch
    lr: float = 0.02  # AdamW learning rate of the heads
    weight_decay: float = 0.0  # AdamW weight decay
    clip: float = 0.2  # PPO ratio clipping epsilon
    kl_coef: float = 0.0  # weight of the KL to the initial policy (k3 estimator)
    entropy_coef: float = 0.01  # entropy bonus
    max_grad_norm: float = 1.0  # gradient clipping
    advantage_eps: float = 1e-4  # advantage = (r - mean) / (std + eps)
    max_minutes: float = 0.0  # wall-clock bound of the run (setup included; 0 = none): at the deadline the run
    #                           stops after the iteration in progress, checkpoints and saves its policy
    scale_rewards: bool = True  # divide by the group's std (False: r - mean, as Dr. GRPO; a small length
    #                             term then stays small where every rollout of a group is right)

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size={self.group_size}: GRPO needs at least 2 samples per group "
                             "(advantages are relative to the group); set group_size >= 2")
        for name in ("iterations", "groups_per_iteration", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name}={getattr(self, name)}: expected an integer >= 1")
        if self.lr <= 0:
            raise ValueError(f"grpo.lr={self.lr}: expected a positive learning rate")
        if not 0 < self.clip < 1:
            raise ValueError(f"grpo.clip={self.clip}: expected a number in (0, 1), e.g. 0.2")
        for name in ("kl_coef", "entropy_coef", "weight_decay", "advantage_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"grpo.{name}={getattr(self, name)}: expected a number >= 0")
        if self.max_minutes < 0:
            raise ValueError(f"grpo.max_minutes={self.max_minutes}: expected minutes >= 0 (0 = no bound)")
        if self.max_grad_norm <= 0:
            raise ValueError(f"grpo.max_grad_norm={self.max_grad_norm}: expected a positive number")


@dataclass
class RolloutConfig:
    """Where episodes run: in the controller's process (default) or on Ray actors (DESIGN.md, "Rollouts")."""

    backend: str = "inprocess"  # "inprocess" or "ray"
    rows_per_batch: int = 0  # inprocess: rows per batched episode run, whole groups (0 = all of an iteration's rows)
    threads: int = 2  # torch threads of the process that runs episodes (each Ray worker's, for ray; 0 = torch's default)
    address: str = "local"  # ray: "local" (start Ray on this machine), "auto" (the running cluster) or "HOST:PORT"
    num_workers: int = 2  # ray: rollout actors, each with its own frozen generator and env
    num_cpus_per_worker: float = 1.0  # ray: CPUs reserved per actor
    num_gpus_per_worker: float = 0.0  # ray: GPUs per actor (the generator moves to its GPU when > 0)
    shards_per_worker: int = 1  # ray: an iteration's groups are cut into num_workers x this shards (at most one per group)
    max_restarts: int = 3  # ray: restarts of a dead actor before its slot is dropped

    def __post_init__(self):
        if self.backend not in ("inprocess", "ray"):
            raise ValueError(f"rollouts.backend={self.backend!r}: expected 'inprocess' or 'ray'")
        if self.rows_per_batch < 0:
            raise ValueError(f"rollouts.rows_per_batch={self.rows_per_batch}: expected an integer >= 0 (0 = one batch)")
        if self.threads < 0:
            raise ValueError(f"rollouts.threads={self.threads}: expected an integer >= 0")
        if not self.address:
            raise ValueError("rollouts.address: expected 'local', 'auto' or HOST:PORT of a Ray cluster")
        for name in ("num_workers", "shards_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollouts.{name}={getattr(self, name)}: expected an integer >= 1")
        if self.num_cpus_per_worker <= 0:
            raise ValueError(f"rollouts.num_cpus_per_worker={self.num_cpus_per_worker}: expected a number > 0")
        for name in ("num_gpus_per_worker", "max_restarts"):
            if getattr(self, name) < 0:
                raise ValueError(f"rollouts.{name}={getattr(self, name)}: expected a number >= 0")


@dataclass
class LoggingConfig:
    """TensorBoard, sample grids and checkpoints."""

    sample_every: int = 8  # iterations between full-vs-accelerated sample grids
    checkpoint_every: int = 4  # iterations between checkpoints (and the last one)
    progress: bool = True  # progress bar

    def __post_init__(self):
        for name in ("sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"logging.{name}={getattr(self, name)}: expected an integer >= 1")


@dataclass
class ExperimentConfig:
    """One ``hasten train`` run: the frozen generator, the target, the policy, rewards and GRPO."""

    generator: str = ""  # embedded:NAME (shapes, arith), a generator/reasoner folder, or a diffusers pipeline folder
    task: str = "auto"  # a registered task ("denoising", "reasoning", ...) or "auto" (the one that claims the generator)
    generator_options: dict = field(default_factory=dict)  # pipeline folder: prompts, resolution, dtype, device
    name: str = "run"  # run folder name under runs/
    seed: int = 0  # seeds the training pairs, the policy init and the decision sampling
    num_steps: int = 0  # schedule length (0 = the generator's default)
    guidance: float = -1.0  # guidance scale (-1 = the generator's default)
    budget: float = 0.4  # target cost fraction (0, 1]
    cost_unit: str = "flops"  # "flops" (analytic) or "time" (measured per knob level at batch 1 at the start)
    forecast: bool = False  # skipped steps and reused residuals extrapolated (first order in sigma) instead of reused
    forecast_space: str = "velocity"  # what a skipped step extrapolates: "velocity" or "noise" (x + (1 - sigma) v)
    budget_range: list[float] = field(default_factory=list)  # [lo, hi]: draw a budget per group instead
    budget_stages: list = field(default_factory=list)  # [[iteration, lo, hi], ...]: the range from that iteration on
    train_pairs: int = 64  # size of the pool of (class, noise) training pairs
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rewards: dict = field(default_factory=dict)  # reward terms ({} = the task's default_rewards)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def budget_range_at(self, iteration: int) -> list[float]:
        """The budget range of ``iteration`` (``budget_range``, or its latest stage; [] = the fixed budget)."""
        lo_hi = self.budget_range
        for first, lo, hi in self.budget_stages:
            if iteration >= first:
                lo_hi = [lo, hi]
        return lo_hi

    def __post_init__(self):
        if not self.generator:
            raise ValueError("generator: missing; expected embedded:shapes or a generator folder")
        if self.task != "auto" and self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: expected 'auto' or one of {', '.join(map(repr, TASKS))}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name={self.name!r}: expected a plain folder name, e.g. quickstart")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget={self.budget}: expected a FLOPs fraction in (0, 1], e.g. 0.4 for 2.5x")
        if self.cost_unit not in ("flops", "time"):
            raise ValueError(f"cost_unit={self.cost_unit!r}: expected 'flops' or 'time'")
        if self.forecast_space not in FORECAST_SPACES:
            raise ValueError(f"forecast_space={self.forecast_space!r}: expected one of {', '.join(FORECAST_SPACES)}")
        if self.budget_range:
            lo_hi = self.budget_range
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
                raise ValueError(f"budget_range={lo_hi}: expected [lo, hi] with 0 < lo <= hi <= 1")
        first = -1
        for stage in self.budget_stages:
            if (not isinstance(stage, (list, tuple)) or len(stage) != 3 or isinstance(stage[0], bool)
                    or not isinstance(stage[0], int) or stage[0] <= first
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stage[1:])
                    or not 0 < stage[1] <= stage[2] <= 1):
                raise ValueError(f"budget_stages: {stage!r}: expected [iteration, lo, hi] with increasing "
                                 "iterations >= 0 and 0 < lo <= hi <= 1, e.g. [[64, 0.12, 0.9]]")
            first = stage[0]
        if self.num_steps < 0:
            raise ValueError(f"num_steps={self.num_steps}: expected an integer >= 1 (or 0 for the generator's)")
        if self.guidance < 0 and self.guidance != -1.0:
            raise ValueError(f"guidance={self.guidance}: expected a number >= 0 (or -1 for the generator's)")
        if self.train_pairs < self.grpo.groups_per_iteration:
            raise ValueError(f"train_pairs={self.train_pairs} < grpo.groups_per_iteration="
                             f"{self.grpo.groups_per_iteration}: expected at least one pair per group")
        if not isinstance(self.rewards, dict):
            raise ValueError("rewards: expected a mapping of reward terms, e.g. {fidelity: {weight: 1.0}}")

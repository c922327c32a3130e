"""The Task interface and its registry: a process type hasten accelerates is one :class:`Task`.

A task binds, once, what the rest of hasten needs to know about a process type: how to load its
frozen model, its Gymnasium env (and the episode contract of :mod:`hasten.rollouts.inprocess`), its
policy heads, its references and metrics, its report panels, its ``hasten compare`` peers and its
``hasten.accelerate`` plug-in. The GRPO trainer, the in-process and Ray rollout pools, ``hasten
train``, ``hasten policy eval``, ``hasten compare``, ``hasten report`` and ``hasten.accelerate`` only
call these methods; none of them knows which task it runs.

A new process type is one module that subclasses :class:`Task` and registers an instance::

    @register_task
    class MyTask(Task):
        name = "my-task"
        ...

Example:
    >>> sorted(TASKS)
    ['denoising', 'reasoning', 'unmasking']
    >>> get_task("denoising").env_ids
    ('hasten/Denoising-v0',)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from hasten.errors import HastenError

#: name -> the registered :class:`Task` instance
TASKS: dict[str, Task] = {}


@dataclass
class TaskSetup:
    """What a task builds for one training run (returned by :meth:`Task.setup`).

    Attributes:
        policy: the freshly initialised policy heads.
        references: the full-compute references of the episodes (shared by the env, the Ray pool and
            the checkpoint: ``known``, ``remember``, ``add``, ``shards``).
        env_options: plain data the task's :meth:`Task.make_env` needs beside the model (sent to Ray workers).
        pairs: (P, 2) int64 training pairs (condition, seed) the iterations draw their groups from.
        num_steps, guidance: the schedule of the run (guidance 0 where a task has none).
    """

    policy: object
    references: object
    env_options: dict
    pairs: np.ndarray
    num_steps: int
    guidance: float = 0.0
    extra: dict = field(default_factory=dict)


def cycling_pairs(conditions, count: int, seed: int) -> np.ndarray:
    """(count, 2) int64 training pairs: the conditions in turn, each with a problem seed drawn from ``seed``."""
    conditions = np.asarray(conditions)
    seeds = np.random.default_rng(seed).integers(0, 1_000_000, size=count)
    return np.stack([conditions[np.arange(count) % len(conditions)], seeds], axis=1)


class Task(ABC):
    """One process type. Subclasses set the class attributes and implement the abstract methods;
    the others have defaults (a task without peers has no ``compare``, ...)."""

    name: str = ""
    env_ids: tuple[str, ...] = ()
    default_model: str = ""  # what ``--generator`` defaults to
    fallback: bool = False  # ``task: auto`` asks this task last (it claims what no other task does)
    default_rewards: dict = {}  # the rewards of an experiment file that names none
    #: (metric key, title) of the three curves of ``hasten report``; the x-axis label of its heatmaps
    report_panels: tuple[tuple[str, str], ...] = ()
    report_schedule_label: str = "quarter of the schedule"
    report_step_label: str = "step of the schedule"
    report_knobs: tuple[str, ...] = ()  # knobs whose decision heatmaps ``hasten report`` draws
    knobs: dict = {}  # knob -> levels of a plug-in task's heads (what an experiment's policy section may name)
    default_budgets: str = ""  # ``hasten compare --budgets`` when not given

    # ------------------------------------------------------------------------- the model
    def claims(self, model: str) -> bool:
        """Whether ``model`` (a name or folder) is this task's, for ``task: auto``."""
        return False

    @abstractmethod
    def load_model(self, name_or_path: str, options: dict | None = None, device: str | None = None):
        """The frozen model of ``name_or_path`` with its loader ``options`` (an experiment's
        ``generator_options``), moved to ``device`` when given (a Ray worker's GPU)."""

    # ------------------------------------------------------------------------- training
    def check_rewards(self, reward, where: str = "rewards") -> None:
        """Reject reward terms this task's env cannot compute (a clear error before any work)."""

    @abstractmethod
    def setup(self, config, model, reward, run_dir: str) -> TaskSetup:
        """The policy, references and env options of a ``hasten train`` run of ``config``."""

    @abstractmethod
    def references(self, model, env_options: dict, cache_dir: str | None = None):
        """An empty reference store for ``model`` (a Ray worker's, filled from the controller's)."""

    @abstractmethod
    def make_env(self, num_envs: int, model, reward, references, env_options: dict, group_size: int = 1):
        """The batched env of ``num_envs`` rows that the pools run (:func:`~hasten.rollouts.run_episodes`)."""

    def metrics(self, batch) -> dict:
        """``charts/...`` of one iteration's :class:`~hasten.rollouts.TrajectoryBatch`."""
        return {}

    def progress(self, metrics: dict) -> dict:
        """The progress bar's postfix of one iteration."""
        return {"reward": f"{metrics['charts/reward']:.3f}"}

    def next_steps(self, policy_dir: str) -> str:
        """What ``hasten train`` suggests running after it saved ``policy_dir``."""
        return f"hasten policy eval {policy_dir} --n 256   |   hasten sample --policy {policy_dir} --out side.png"

    def log_samples(self, trainer, iteration: int) -> None:
        """Write what the greedy policy makes of a few training pairs to ``trainer.writer``."""

    # ------------------------------------------------------------------------- policies
    @abstractmethod
    def owns_policy(self, config) -> bool:
        """Whether a saved :class:`~hasten.policies.PolicyConfig` is one of this task's policies."""

    @abstractmethod
    def policy_class(self, config, where: str = "policy"):
        """The policy class of a saved config (checked against what this hasten provides)."""

    def evaluate_policy(self, policy, args) -> tuple[dict, str]:
        """``hasten policy eval``: (result, markdown table) of ``policy`` on held-out episodes."""
        raise HastenError(f"policy eval: not available for the {self.name} task")

    # ------------------------------------------------------------------------- inference
    def accepts(self, target, policy) -> bool:
        """Whether ``hasten.accelerate(target, policy)`` is this task's (by the policy or the target)."""
        return False

    def accelerate(self, target, policy, budget=None, **options):
        """The context manager that applies ``policy`` inside ``target`` and restores it on exit."""
        raise HastenError(f"hasten.accelerate: the {self.name} task has no plug-in")

    # ------------------------------------------------------------------------- compare
    def compare(self, args) -> dict:
        """``hasten compare --task NAME``: measure (or re-read ``--from-json``) and return the result."""
        raise HastenError(f"compare: not available for the {self.name} task")

    def compare_report(self):
        """(markdown(result), plot(result, path), benchmarks_section(result, table, plot)); the section's first
        line is its ``## `` heading, the one ``--benchmarks-md`` replaces."""
        raise HastenError(f"compare: not available for the {self.name} task")

    def __repr__(self) -> str:
        return f"<hasten task {self.name!r}>"


def register_task(cls):
    """Class decorator: register an instance of a :class:`Task` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a name")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str, module: str = "") -> Task:
    """The registered task ``name`` (importing ``module`` first when given: a plug-in's, on a Ray worker)."""
    if name not in TASKS and module:
        importlib.import_module(module)
    if name not in TASKS:
        raise HastenError(f"task={name!r}: unknown task; expected one of {', '.join(sorted(TASKS))} "
                          "(or 'auto': from the generator)")
    return TASKS[name]


def task_of_model(model: str, task: str = "auto") -> Task:
    """``task``, with ``auto`` resolved to the registered task that claims ``model`` (the fallback task last)."""
    if task != "auto":
        return get_task(task)
    for candidate in sorted(TASKS.values(), key=lambda task: task.fallback):
        if candidate.claims(model):
            return candidate
    raise HastenError(f"generator={model!r}: no registered task ({', '.join(sorted(TASKS))}) takes it; "
                      "set task: explicitly")


def task_of_policy(config, where: str = "policy") -> Task:
    """The task whose policies a saved :class:`~hasten.policies.PolicyConfig` describes."""
    for candidate in TASKS.values():
        if candidate.owns_policy(config):
            return candidate
    raise HastenError(f"{where}: knobs {sorted(config.knobs)} are no registered task's "
                      f"({', '.join(sorted(TASKS))})")


def accelerate(pipe_or_model, policy, budget: float | None = None, *, greedy: bool = False, seed: int = 0,
               seeds=None, **options):
    """``hasten.accelerate``: apply ``policy``'s decisions inside a frozen model, through the plug-in of
    the task that takes (``pipe_or_model``, ``policy``); use it as a context manager.

    Denoising: a diffusers pipeline with a ``transformer`` of a registered DiT family (``FluxPipeline``,
    ``StableDiffusion3Pipeline``) and a flow-matching Euler scheduler, or a hasten generator, with a
    :class:`~hasten.policies.Policy` trained for that family
    (:class:`~hasten.policies.accelerate.Acceleration`). Reasoning: a transformers causal LM (or a hasten
    Reasoner) with a chain-of-thought head, and ``tokenizer=``, ``threshold=``, ``max_steps=``,
    ``max_think_tokens=`` in ``options`` (:class:`~hasten.policies.accelerate_lm.ChainAcceleration`).

    Args:
        policy: a :class:`~hasten.policies.Policy`, a policy folder, or a shipped policy's name
            (``"embedded:shapes-budgets"``, ``hasten policy list``).
        budget: the target cost fraction the policy is conditioned on (default: its own); 1.0 = full compute.
        greedy: take each knob's most likely level instead of sampling it.
        seed, seeds: the random stream of sampled decisions (per image or row: ``seeds[i]``, default its index).

    Raises:
        HastenError: a policy that is not a hasten policy, an object no task can drive, a policy trained
            for another model family (the message names both), a budget outside (0, 1].

    Example:
        >>> with hasten.accelerate(pipe, policy, budget=0.4) as acc:  # doctest: +SKIP
        ...     latents = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, output_type="latent").images
        >>> acc.stats["flops_fraction"]  # doctest: +SKIP
        array([0.41, 0.38])
    """
    from hasten.policies.heads import Policy

    if isinstance(policy, str):
        policy = Policy.from_pretrained(policy)
    if not isinstance(policy, Policy):
        raise HastenError(f"hasten.accelerate: expected a hasten Policy (Policy.from_pretrained(path)); "
                          f"got {type(policy).__name__}")
    # the task that owns the policy first (its plug-in names what is wrong with the target), then by the target
    owners = [task for task in TASKS.values() if task.owns_policy(policy.config)]
    for candidate in owners + [task for task in TASKS.values() if task not in owners]:
        if candidate.accepts(pipe_or_model, policy):
            return candidate.accelerate(pipe_or_model, policy, budget, greedy=greedy, seed=seed, seeds=seeds,
                                        **options)
    raise HastenError(f"hasten.accelerate: no task takes a {type(pipe_or_model).__name__} with a policy of knobs "
                      f"{sorted(policy.config.knobs)}; registered tasks: {', '.join(sorted(TASKS))}")

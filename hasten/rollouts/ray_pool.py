"""The Ray rollout pool: episodes on Ray actors, each with its own frozen generator and env.

The controller stays one plain loop (verl's single-controller idea); per iteration it sends

    one ``ray.put`` of the head's weights and the reward's state (the online discriminator),
        tagged with a version, which every actor loads once;
    shards of whole (condition, noise, group) tasks, with the full-compute references the
        controller already holds for them;

and gets back :class:`~hasten.rollouts.batch.TrajectoryBatch` shards as numpy arrays, joined in
shard order. An episode is a function of its (condition, noise seed, budget, decision seed) only,
so a shard gives the same trajectories on any actor: when an actor dies mid-iteration it is
restarted (or its slot dropped after ``max_restarts``) and its shard re-run elsewhere — the
iteration's data equals a run without the failure, nothing lost, nothing counted twice.

Example (``experiments/ray_quickstart.yaml``)::

    rollouts: {backend: ray, address: local, num_workers: 2, threads: 1}
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.rollouts.batch import TrajectoryBatch
from hasten.rollouts.inprocess import InProcessPool

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0


@dataclass
class RolloutSpec:
    """What an actor needs to build its task's model, reward, references and env (plain data, sent once)."""

    task: str  # the registered task (hasten.tasks)
    generator: str
    rewards: dict
    policy: dict  # the policy's config (its weights come with every iteration)
    env_options: dict = field(default_factory=dict)  # the task's env arguments beside the model (TaskSetup.env_options)
    threads: int = 1
    generator_options: dict = field(default_factory=dict)  # a pipeline folder's prompts, resolution, dtype, device
    group_size: int = 1  # rows per GRPO group (the reasoning env terminates a group's rows together)
    task_module: str = ""  # the module that registers the task (imported by an actor that does not know it)


class RolloutWorker:
    """One rollout actor: a frozen model, the reward terms and one env per shard size, of the spec's task.

    Args:
        spec: the :class:`RolloutSpec` as a dict.
        device: where the model runs ("cuda" when the actor holds a GPU).
    """

    def __init__(self, spec: dict, device: str = "cpu"):
        from hasten.config import from_dict
        from hasten.policies.heads import PolicyConfig
        from hasten.rewards import build_reward
        from hasten.tasks import get_task

        self.spec = RolloutSpec(**spec)
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        self.task = get_task(self.spec.task, module=self.spec.task_module)
        self.reward = build_reward(self.spec.rewards)
        policy_config = from_dict(PolicyConfig, self.spec.policy, source="policy")
        self.generator = self.task.load_model(self.spec.generator, self.spec.generator_options, device=device)
        self.references = self.task.references(self.generator, self.spec.env_options)
        self.policy = self.task.policy_class(policy_config)(policy_config)
        self.version = None
        self.pool = InProcessPool(lambda n: self.task.make_env(n, self.generator, self.reward, self.references,
                                                               self.spec.env_options, group_size=self.spec.group_size))

    def ready(self) -> int:
        """The actor's process id, once its generator is loaded."""
        return os.getpid()

    def collect(self, weights: dict, shard: dict) -> TrajectoryBatch:
        """Run one shard: ``weights`` = {version, policy, reward}; ``shard`` = rows and known references."""
        start = time.perf_counter()
        if weights["version"] != self.version:
            self.policy.load_state_dict(weights["policy"])
            self.reward.load_state_dict(weights["reward"])
            self.version = weights["version"]
        self.references.remember(shard["references"])
        batch = self.pool.collect(self.policy, shard["conditions"], shard["seeds"], shard["budgets"],
                                 shard["row_seeds"], greedy=shard.get("greedy", False))
        batch.extra.update(busy_s=time.perf_counter() - start, pid=os.getpid())
        return batch


class RayPool:
    """Rollouts on ``config.num_workers`` Ray actors; same ``collect`` as the in-process pool.

    Args:
        spec: what each actor builds (:class:`RolloutSpec`).
        config: the experiment's ``rollouts`` section (address, workers, resources, restarts).
        group_size: rows per group; shards hold whole groups.
        reward: the controller's reward composite (its state is sent with the weights).
        references: the controller's reference cache (known references travel with each shard;
            the ones an actor computes come back in the batch and are added to it): a
            :class:`~hasten.envs.references.ReferenceCache` of full-compute images, or for the
            reasoning task the :class:`~hasten.envs.reasoning.FullChains` of the problems.

    ``on_dispatch(pool)``, when set, is called once per ``collect`` right after the first shards
    were sent (a hook for monitoring, and for the tests that kill an actor mid-iteration).
    """

    def __init__(self, spec: RolloutSpec, config, group_size: int, reward=None, references=None):
        self.config, self.group_size = config, int(group_size)
        self.spec, self.reward, self.references = spec, reward, references
        self.ray, self.owns_ray = connect(config)
        self.restarts = 0
        self.version = 0
        self.on_dispatch = None
        self.last_stats: dict = {}
        device = "cuda" if config.num_gpus_per_worker > 0 else "cpu"
        self._remote = self.ray.remote(RolloutWorker).options(num_cpus=config.num_cpus_per_worker,
                                                              num_gpus=config.num_gpus_per_worker)
        self._device = device
        self.slot_restarts = [0] * config.num_workers
        self.workers = [self._remote.remote(vars(spec), device) for _ in range(config.num_workers)]
        try:
            self.pids = self.ray.get([w.ready.remote() for w in self.workers], timeout=READY_TIMEOUT_S)
        except Exception as e:  # an actor failed to build its generator: the user's problem, say it once
            self.close()
            raise HastenError(f"rollouts: a Ray worker could not start ({_first_line(e)})") from e

    # ------------------------------------------------------------------------- one iteration
    def collect(self, policy, conditions, seeds, budgets, row_seeds, greedy: bool = False) -> TrajectoryBatch:
        """Run one episode per row on the actors; returns the rows in the order given."""
        ray = self.ray
        from ray.exceptions import RayActorError

        start = time.perf_counter()
        self.version += 1
        weights = ray.put({"version": self.version,
                           "policy": {k: v.detach().clone() for k, v in policy.state_dict().items()},
                           "reward": self.reward.state_dict() if self.reward is not None else {}})
        shards = self.shards(len(conditions))
        queue = deque(range(len(shards)))
        idle = [slot for slot, w in enumerate(self.workers) if w is not None]
        running: dict = {}
        results: dict[int, TrajectoryBatch] = {}
        restarts_before = self.restarts
        dispatched = False

        def payload(rows):
            c, s = np.asarray(conditions)[rows], np.asarray(seeds)[rows]
            known = self.references.known(c, s) if self.references is not None else {}
            return {"conditions": c.tolist(), "seeds": s.tolist(), "budgets": np.asarray(budgets)[rows],
                    "row_seeds": np.asarray(row_seeds)[rows], "references": known, "greedy": greedy}

        while queue or running:
            while queue and idle:
                slot, shard = idle.pop(0), queue.popleft()
                running[self.workers[slot].collect.remote(weights, payload(shards[shard]))] = (shard, slot)
            if not dispatched:
                dispatched = True
                if self.on_dispatch is not None:
                    self.on_dispatch(self)
            if not running:
                raise HastenError("rollouts: every Ray worker died and none could be restarted "
                                  f"(rollouts.max_restarts={self.config.max_restarts}); see the Ray logs")
            (ref,), _ = ray.wait(list(running), num_returns=1)
            shard, slot = running.pop(ref)
            try:
                results[shard] = ray.get(ref)
                idle.append(slot)
            except RayActorError as e:
                logger.warning("rollouts: Ray worker %d (pid %s) died during shard %d of iteration %d (%s); "
                               "re-running the shard", slot, self.pids[slot], shard, self.version, _first_line(e))
                queue.appendleft(shard)
                if self._restart(slot):
                    idle.append(slot)
        batch = TrajectoryBatch.concatenate([results[i] for i in range(len(shards))])
        if self.references is not None:
            self.references.add(batch.conditions, batch.seeds, batch.references)
        wall = time.perf_counter() - start
        busy = sum(part["busy_s"] for part in batch.extra["parts"])
        alive = sum(w is not None for w in self.workers)
        self.last_stats = {"perf/worker_restarts": float(self.restarts - restarts_before),
                           "perf/worker_restarts_total": float(self.restarts),
                           "perf/workers": float(alive),
                           "perf/worker_utilisation": busy / max(wall * max(alive, 1), 1e-9)}
        return batch

    def shards(self, rows: int) -> list[np.ndarray]:
        """Row indices of each shard: whole groups, ``num_workers x shards_per_worker`` shards at most."""
        groups = rows // self.group_size
        count = min(groups, self.config.num_workers * self.config.shards_per_worker)
        return [np.concatenate([np.arange(g * self.group_size, (g + 1) * self.group_size) for g in part])
                for part in np.array_split(np.arange(groups), count)]

    def _restart(self, slot: int) -> bool:
        """Replace a dead actor; returns False (and drops the slot) when it cannot be."""
        self.ray.kill(self.workers[slot], no_restart=True)
        self.workers[slot] = None
        if self.slot_restarts[slot] >= self.config.max_restarts:
            logger.warning("rollouts: Ray worker %d dropped after %d restarts", slot, self.slot_restarts[slot])
            return False
        self.slot_restarts[slot] += 1
        self.restarts += 1
        worker = self._remote.remote(vars(self.spec), self._device)
        try:
            self.pids[slot] = self.ray.get(worker.ready.remote(), timeout=READY_TIMEOUT_S)
        except Exception as e:
            logger.warning("rollouts: Ray worker %d could not be restarted (%s); dropping it", slot, _first_line(e))
            self.ray.kill(worker, no_restart=True)
            return False
        self.workers[slot] = worker
        logger.warning("rollouts: Ray worker %d restarted (pid %d)", slot, self.pids[slot])
        return True

    def stats(self) -> dict:
        """Metrics of the last ``collect``: restarts, live workers, utilisation (busy time / wall time)."""
        return dict(self.last_stats)

    def close(self) -> None:
        """Stop the actors (and Ray itself when this pool started it)."""
        for w in getattr(self, "workers", []):
            if w is not None:
                self.ray.kill(w, no_restart=True)
        self.workers = []
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self.owns_ray = False


# ----------------------------------------------------------------------------- connecting
def connect(config):
    """Connect to (or start) Ray and check the cluster can host the workers; returns (ray, started_here).

    Every failure here is a :class:`HastenError` raised before any work starts.
    """
    import ray

    address = config.address
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, configure_logging=False)
        else:
            if address != "auto":
                check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise HastenError(f"rollouts.address={address!r}: cannot connect to a Ray cluster "
                                  f"({_first_line(e)}); start one with `ray start --head` or use address: local") from e
        started = True
    elif address != "local":
        logger.info("rollouts: Ray is already initialised in this process; using that cluster, not %s", address)
    try:
        check_resources(ray, config)
    except HastenError:
        if started:
            ray.shutdown()
        raise
    return ray, started


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """``HOST:PORT`` must parse and accept a TCP connection (so a typo fails in seconds, not minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HastenError(f"rollouts.address={address!r}: expected 'local', 'auto' or HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise HastenError(f"rollouts.address={address!r}: no Ray cluster answers there ({e.strerror or e}); "
                          f"start one on that machine with `ray start --head --port={port}`, or use address: local") from e


def check_resources(ray, config) -> None:
    """The cluster must have the CPUs and GPUs the workers ask for (one node must fit one worker)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, per_worker in (("CPU", config.num_cpus_per_worker), ("GPU", config.num_gpus_per_worker)):
        if per_worker <= 0:
            continue
        field = f"num_{name.lower()}s_per_worker"
        largest = max((n.get(name, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(name, 0.0) for n in nodes)
        if per_worker > largest:
            raise HastenError(f"rollouts.{field}={per_worker}: no node of the Ray cluster has that many "
                              f"{name}s (the largest has {largest:g}); lower it or add such a node")
        if per_worker * config.num_workers > total:
            raise HastenError(f"rollouts.num_workers={config.num_workers} x {field}={per_worker} needs "
                              f"{per_worker * config.num_workers:g} {name}s; the Ray cluster has {total:g}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""Rollout pools and the trajectory batch (DESIGN.md, "Rollouts").

One interface, two pools: ``collect(policy, conditions, seeds, budgets, row_seeds)`` runs one
episode per row and returns a :class:`TrajectoryBatch`; ``stats()`` and ``close()``.
:class:`InProcessPool` runs the batched env in the controller's process (the default);
:class:`RayPool` runs shards of whole groups on Ray actors (``rollouts.backend: ray``). Both run
episodes with :func:`run_episodes`, which knows no task: any env that answers its few questions
(see :mod:`hasten.rollouts.inprocess`) runs in both.
"""

from hasten.rollouts.batch import TrajectoryBatch
from hasten.rollouts.inprocess import InProcessPool, decision_uniforms, run_episodes
from hasten.rollouts.ray_pool import RayPool, RolloutSpec, RolloutWorker

__all__ = ["InProcessPool", "RayPool", "RolloutSpec", "RolloutWorker", "TrajectoryBatch", "decision_uniforms",
           "run_episodes"]

"""Rollout pools and the trajectory batch (DESIGN.md, "Rollouts").

One interface, two pools: ``collect(policy, conditions, seeds, budgets, row_seeds)`` runs one
episode per row and returns a :class:`TrajectoryBatch`; ``stats()`` and ``close()``.
:class:`InProcessPool` runs the batched env in the controller's process (the default);
:class:`RayPool` runs shards of whole groups on Ray actors (``rollouts.backend: ray``);
:class:`ReasoningPool` runs ``hasten/Reasoning-v0`` in-process.
"""

from hasten.rollouts.batch import TrajectoryBatch
from hasten.rollouts.inprocess import InProcessPool, decision_uniforms
from hasten.rollouts.ray_pool import RayPool, RolloutSpec, RolloutWorker
from hasten.rollouts.reasoning import ReasoningPool

__all__ = ["InProcessPool", "RayPool", "ReasoningPool", "RolloutSpec", "RolloutWorker", "TrajectoryBatch", "decision_uniforms"]

"""Rollout pools and the trajectory batch (DESIGN.md, "Rollouts").

``InProcessPool`` runs the batched Denoising env in the controller's process; the Ray pool is a
later issue and will return the same :class:`TrajectoryBatch`.
"""

from hasten.rollouts.batch import TrajectoryBatch
from hasten.rollouts.inprocess import InProcessPool, decision_uniforms

__all__ = ["InProcessPool", "TrajectoryBatch", "decision_uniforms"]

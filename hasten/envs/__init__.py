"""Gymnasium environments over the frozen generators (DESIGN.md, "Environments").

Registered ids:
- ``hasten/Denoising-v0``: ``gymnasium.make_vec("hasten/Denoising-v0", num_envs=N,
  vectorization_mode="vector_entry_point")`` gives the native batched env
  (:class:`~hasten.envs.denoising.DenoisingVectorEnv`); ``gymnasium.make`` the single-row view.
- ``hasten/Reasoning-v0``: the chain of thought of a frozen causal LM, decided line by line
  (:class:`~hasten.envs.reasoning.ReasoningVectorEnv`; ``gymnasium.make`` the single-row view).
"""

import gymnasium

from hasten.envs.denoising import DenoisingEnv, DenoisingVectorEnv
from hasten.envs.reasoning import ReasoningEnv, ReasoningVectorEnv

if "hasten/Denoising-v0" not in gymnasium.registry:
    gymnasium.register(id="hasten/Denoising-v0", entry_point="hasten.envs.denoising:DenoisingEnv",
                       vector_entry_point="hasten.envs.denoising:DenoisingVectorEnv")
if "hasten/Reasoning-v0" not in gymnasium.registry:
    gymnasium.register(id="hasten/Reasoning-v0", entry_point="hasten.envs.reasoning:ReasoningEnv",
                       vector_entry_point="hasten.envs.reasoning:ReasoningVectorEnv")

__all__ = ["DenoisingEnv", "DenoisingVectorEnv", "ReasoningEnv", "ReasoningVectorEnv"]

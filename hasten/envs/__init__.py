"""Gymnasium environments over the frozen generators (DESIGN.md, "Environments").

Registered ids:
- ``hasten/Denoising-v0``: ``gymnasium.make_vec("hasten/Denoising-v0", num_envs=N,
  vectorization_mode="vector_entry_point")`` gives the native batched env
  (:class:`~hasten.envs.denoising.DenoisingVectorEnv`); ``gymnasium.make`` the single-row view.
"""

import gymnasium

from hasten.envs.denoising import DenoisingEnv, DenoisingVectorEnv

if "hasten/Denoising-v0" not in gymnasium.registry:
    gymnasium.register(id="hasten/Denoising-v0", entry_point="hasten.envs.denoising:DenoisingEnv",
                       vector_entry_point="hasten.envs.denoising:DenoisingVectorEnv")

__all__ = ["DenoisingEnv", "DenoisingVectorEnv"]

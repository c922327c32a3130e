"""Policy heads, their save/load, and the inference plug-in (DESIGN.md, "Policies").

``Policy`` is a small MLP trunk with one categorical head per knob; ``Policy.from_pretrained`` /
``policy.save_pretrained`` use safetensors + JSON; ``accelerate(pipe_or_generator, policy, budget)``
applies a policy's per-image decisions inside a diffusers pipeline or a hasten generator.
"""

from hasten.policies.heads import Policy, PolicyConfig, load_policy
from hasten.policies.accelerate import Acceleration
from hasten.tasks import accelerate

__all__ = ["Acceleration", "Policy", "PolicyConfig", "accelerate", "load_policy"]

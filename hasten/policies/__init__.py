"""Policy heads and their save/load (DESIGN.md, "Policies").

``Policy`` is a small MLP trunk with one categorical head per knob; ``Policy.from_pretrained`` /
``policy.save_pretrained`` use safetensors + JSON.
"""

from hasten.policies.heads import Policy, PolicyConfig, load_policy

__all__ = ["Policy", "PolicyConfig", "load_policy"]

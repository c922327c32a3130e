"""Reward registry and its terms: fidelity, cost, discriminator; correctness and length for reasoning (DESIGN.md, "Rewards").

Terms are registered by name (``@register_reward("fidelity")``, as verl's ``register_adv_est``)
and combined with weights from the experiment file by :class:`CompositeReward`. A dotted path
``package.module:ClassName`` plugs in a user's own term without touching hasten.

Example:
    >>> reward = build_reward({"fidelity": {"weight": 1.0}, "cost": {"weight": 2.0, "mode": "fraction"}})
    >>> sorted(reward.terms)
    ['cost', 'fidelity']
"""

from hasten.rewards.registry import (REWARDS, CompositeReward, RewardInputs, build_reward, get_reward,
                                     register_reward)
from hasten.rewards import terms as _terms  # noqa: F401  (registers fidelity and cost)
from hasten.rewards import discriminator as _discriminator  # noqa: F401  (registers discriminator)
from hasten.rewards.correctness import ReasoningInputs  # registers correctness and length
from hasten.rewards.discriminator import Discriminator

__all__ = ["REWARDS", "CompositeReward", "Discriminator", "ReasoningInputs", "RewardInputs", "build_reward", "get_reward",
           "register_reward"]

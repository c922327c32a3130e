"""The reward registry and the weighted composite of its terms."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from hasten.errors import HastenError

REWARDS: dict[str, type] = {}


@dataclass
class RewardInputs:
    """What a reward term sees of a batch of finished episodes.

    Attributes:
        images: (B, C, H, W) accelerated samples in [-1, 1].
        references: (B, C, H, W) full-compute samples of the same condition and noise.
        flops_fraction: (B,) FLOPs spent relative to the full-compute trajectory.
        budget: (B,) target cost fraction of each episode.
        cost_fraction: (B,) cost spent in the experiment's unit (FLOPs, or measured time); the
            FLOPs fraction when None.
    """

    images: torch.Tensor
    references: torch.Tensor
    flops_fraction: torch.Tensor
    budget: torch.Tensor
    cost_fraction: torch.Tensor | None = None


def register_reward(name: str):
    """Class decorator: make a reward term known under ``name`` to experiment files."""

    def wrap(cls):
        REWARDS[name] = cls
        cls.registered_name = name
        return cls

    return wrap


def get_reward(name: str) -> type:
    """A registered term by name, or ``package.module:ClassName``; errors list the known names."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise HastenError(f"reward {name!r}: cannot import it ({e})") from e
    raise HastenError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))} "
                      "(or a dotted path package.module:ClassName)")


class CompositeReward:
    """Weighted sum of reward terms; each term's per-episode values are kept for logging.

    Args:
        terms: name -> term object (a callable ``term(inputs) -> (B,) tensor``).
        weights: name -> weight.
    """

    def __init__(self, terms: dict, weights: dict[str, float]):
        self.terms = terms
        self.weights = weights

    def __call__(self, inputs: RewardInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (total (B,), {name: (B,) unweighted term values})."""
        values = {name: term(inputs).detach().double().cpu() for name, term in self.terms.items()}
        total = torch.zeros(len(next(iter(values.values()))), dtype=torch.float64)
        for name, value in values.items():
            total += self.weights[name] * value
        return total, values

    def get(self, name: str):
        return self.terms.get(name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors of the stateful terms (``name.key``), e.g. the online discriminator's weights:
        what a Ray rollout worker needs to compute the same rewards as the controller."""
        return {f"{name}.{k}": v for name, term in self.terms.items() if hasattr(term, "state_dict")
                for k, v in term.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, term in self.terms.items():
            if hasattr(term, "load_state_dict"):
                term.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})


def build_reward(spec: dict[str, dict], where: str = "rewards") -> CompositeReward:
    """``{name: {"weight": w, **term_kwargs}}`` -> :class:`CompositeReward` (weight-0 terms are dropped)."""
    if not isinstance(spec, dict) or not spec:
        raise HastenError(f"{where}: expected a mapping of reward terms, e.g. "
                          "{fidelity: {weight: 1.0}, cost: {weight: 4.0}}")
    terms, weights = {}, {}
    for name, options in spec.items():
        options = dict(options or {})
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise HastenError(f"{where}.{name}.weight: expected a number, got {weight!r}")
        cls = get_reward(name)
        if weight == 0:
            continue
        try:
            terms[name] = cls(**options)
        except TypeError as e:
            raise HastenError(f"{where}.{name}: {e}") from e
        weights[name] = float(weight)
    if not terms:
        raise HastenError(f"{where}: every term has weight 0; expected at least one term with a weight")
    return CompositeReward(terms, weights)

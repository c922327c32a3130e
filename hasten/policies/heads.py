"""Policy heads: a small MLP trunk and one categorical head per knob (DESIGN.md, "Policies").

Decisions of the knobs are independent given the observation (the joint log-probability is the
sum over heads). The budget column of the observation conditions the policy on a target speed,
so one trained policy serves many budgets; with ``budget_conditioned=False`` that column is
zeroed. Levels a policy may not use (``allowed_levels``) are masked out of its heads.

Saved as ``policy.safetensors`` + ``policy_config.json`` (never pickle); the config records the
knob levels, the observation columns and the generator family, and loading a policy into an
incompatible generator is a clear error.

Example:
    >>> policy = Policy(PolicyConfig(family="flux"))
    >>> actions, logp = policy.act(torch.zeros(2, len(OBSERVATION)))
    >>> actions.shape, logp.shape
    (torch.Size([2, 3]), torch.Size([2]))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributions import Categorical

from hasten.errors import HastenError
from hasten.io import atomic_directory, read_json, read_safetensors
from hasten.knobs import FORECAST_SPACES, KNOBS
from hasten.knobs.cost import time_spent
from hasten.models.rows import OBSERVATION

CONFIG_NAME = "policy_config.json"
WEIGHTS_NAME = "policy.safetensors"
KNOB_NAMES = tuple(k.name for k in KNOBS)
DIT_KNOBS = {k.name: list(k.levels) for k in KNOBS}
#: the chain-of-thought knob of a reasoning LM (:mod:`hasten.policies.cot`)
REASONING_KNOBS = {"think": ["continue", "stop"]}


@dataclass
class PolicyConfig:
    """Architecture and contract of a policy (filled from the experiment file's ``policy`` section)."""

    hidden: int = 64  # width of the MLP trunk
    layers: int = 2  # hidden layers of the trunk
    budget_conditioned: bool = True  # read the target budget from the observation
    allowed_levels: dict = field(default_factory=dict)  # knob -> levels the policy may choose (default: all)
    init_probs: dict = field(default_factory=dict)  # knob -> initial probability of each level (default: uniform)
    family: str = ""  # generator family the policy was trained for (set by the trainer)
    generator: str = ""  # generator it was trained on (the default of policy eval / sample)
    generator_options: dict = field(default_factory=dict)  # its loader options: a pipeline's prompts, resolution, ...
    num_steps: int = 0  # schedule length it was trained on (set by the trainer)
    budget: float = 0.4  # default target budget at inference
    cost_unit: str = "flops"  # unit of the budget: "flops" or "time" (measured, set by the trainer)
    time_table: list = field(default_factory=list)  # (cache, sparse) -> time fraction, for cost_unit "time"
    forecast: bool = False  # skipped steps and reused residuals are forecast (set by the trainer)
    forecast_space: str = "velocity"  # what skipped steps extrapolate: "velocity" or "noise" (set by the trainer)
    knobs: dict = field(default_factory=lambda: dict(DIT_KNOBS))  # knob -> levels (set by the trainer)
    observation: list = field(default_factory=lambda: list(OBSERVATION))  # observation columns (set by the trainer)
    chain_format: dict = field(default_factory=dict)  # reasoning: {"boundary": ..., "answer_prefix": ...}

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 0:
            raise ValueError(f"hidden={self.hidden}, layers={self.layers}: expected hidden >= 1 and layers >= 0")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget={self.budget}: expected a FLOPs fraction in (0, 1]")
        if self.cost_unit not in ("flops", "time"):
            raise ValueError(f"cost_unit={self.cost_unit!r}: expected 'flops' or 'time'")
        if self.forecast_space not in FORECAST_SPACES:
            raise ValueError(f"forecast_space={self.forecast_space!r}: expected one of {', '.join(FORECAST_SPACES)}")
        if self.cost_unit == "time" and (len(self.time_table) != 3 or any(len(r) != 3 for r in self.time_table)):
            raise ValueError(f"time_table={self.time_table}: cost_unit 'time' needs 3 x 3 time fractions "
                             "(cache level x sparse level)")
        # a denoising, reasoning or plug-in task's policy: the experiment's generator decides which knobs it gets
        from hasten.tasks.registry import (
            TASKS,  # (the registry imports nothing of hasten's policies)
        )

        known = {**DIT_KNOBS, **REASONING_KNOBS, **{k: v for task in TASKS.values() for k, v in task.knobs.items()},
                 **self.knobs}
        for section in (self.allowed_levels, self.init_probs):
            unknown = sorted(set(section) - set(known))
            if unknown:
                raise ValueError(f"unknown knob(s) {unknown}; expected some of {list(known)}")
        for name, knob_levels in known.items():
            levels = self.allowed_levels.get(name, list(range(len(knob_levels))))
            if not levels or any(not isinstance(v, int) or not 0 <= v < len(knob_levels) for v in levels):
                raise ValueError(f"allowed_levels.{name}={levels}: expected a non-empty list of level "
                                 f"indices in 0..{len(knob_levels) - 1} ({', '.join(map(str, knob_levels))})")
            probs, covered = self.init_probs.get(name), max(levels) + 1
            if probs is not None and (len(probs) not in (len(knob_levels), covered) or any(p < 0 for p in probs)
                                      or sum(probs) <= 0):
                also = (f" (or {covered}, for the levels up to the highest allowed)"
                        if covered < len(knob_levels) else "")
                raise ValueError(f"init_probs.{name}={probs}: expected {len(knob_levels)} non-negative numbers "
                                 f"with a positive sum{also}")

    def covering_allowed_levels(self) -> PolicyConfig:
        """A copy whose heads cover each knob's levels only up to the highest it may use (what the
        trainer builds): levels added to a knob later (step_skip 3, 5, 7) give no outputs to a
        policy that may not use them, so its shape and random start stay what they were."""
        knobs = {name: list(levels[:max(self.allowed_levels.get(name, range(len(levels)))) + 1])
                 for name, levels in self.knobs.items()}
        probs = {name: list(p[:len(knobs[name])]) for name, p in self.init_probs.items()}
        return dataclasses.replace(self, knobs=knobs, init_probs=probs)

    @property
    def sampler_forecast(self) -> bool | str:
        """The sampler's ``forecast`` argument this policy was trained with (False, or the space)."""
        return self.forecast and self.forecast_space


class Policy(nn.Module):
    """Categorical heads over the knobs of its config (the DiT knobs by default), one MLP trunk."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.knobs = {name: list(levels) for name, levels in config.knobs.items()}
        width, layers = config.hidden, []
        in_dim = len(config.observation)
        for _ in range(config.layers):
            layers += [nn.Linear(in_dim, width), nn.Tanh()]
            in_dim = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(in_dim, len(levels)) for name, levels in self.knobs.items()})
        mask = torch.zeros(len(self.knobs), max(len(v) for v in self.knobs.values()), dtype=torch.bool)
        for i, (name, levels) in enumerate(self.knobs.items()):
            mask[i, config.allowed_levels.get(name, list(range(len(levels))))] = True
        self.register_buffer("allowed", mask, persistent=False)
        self._budget_column = list(config.observation).index("budget")
        with torch.no_grad():  # near-uniform start, or the configured initial probabilities
            for name, levels in self.knobs.items():
                head = self.heads[name]
                head.weight.mul_(0.01)
                probs = config.init_probs.get(name)
                if probs is not None:  # (given for the allowed levels only: the others are masked anyway)
                    probs = torch.tensor(list(probs) + [0.0] * (len(levels) - len(probs)), dtype=torch.float32)
                head.bias.copy_(torch.log(probs.clamp_min(1e-3)) if probs is not None else torch.zeros(len(levels)))

    # ------------------------------------------------------------------------------ distributions
    def forward(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """(B, obs_dim) observations -> one (B, levels) logit tensor per knob (masked levels at -inf)."""
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if not self.config.budget_conditioned:
            obs = obs.clone()
            obs[:, self._budget_column] = 0.0
        h = self.trunk(obs)
        out = []
        for i, name in enumerate(self.knobs):
            logits = self.heads[name](h)
            out.append(logits.masked_fill(~self.allowed[i, : logits.shape[1]], float("-inf")))
        return out

    def distributions(self, obs) -> list[Categorical]:
        return [Categorical(logits=logits) for logits in self(obs)]

    @torch.no_grad()
    def act(self, obs, greedy: bool = False, generator: torch.Generator | None = None,
            uniforms: torch.Tensor | None = None):
        """Sample (or, ``greedy``, take the most likely) levels: ((B, K) long actions, (B,) log-probs).

        ``uniforms`` (B, K) in [0, 1) make the draw explicit (inverse CDF per knob), so that a row's
        decisions depend only on its own random numbers, whatever batch it runs in.
        """
        dists = self.distributions(obs)
        if greedy:
            actions = torch.stack([d.probs.argmax(-1) for d in dists], dim=1)
        else:
            if uniforms is None:
                uniforms = torch.rand(len(dists[0].probs), len(dists), generator=generator)
            actions = torch.stack([(d.probs.cumsum(-1) < uniforms[:, i:i + 1]).sum(-1).clamp(max=d.probs.shape[-1] - 1)
                                   for i, d in enumerate(dists)], dim=1)
        return actions, self.log_prob(dists, actions)

    @staticmethod
    def log_prob(dists: list[Categorical], actions: torch.Tensor) -> torch.Tensor:
        return sum(d.log_prob(actions[:, i]) for i, d in enumerate(dists))

    def evaluate(self, obs, actions) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint log-probability (B,) of ``actions`` and joint entropy (B,), with gradients."""
        dists = self.distributions(obs)
        entropy = sum(d.entropy() for d in dists)
        return self.log_prob(dists, torch.as_tensor(actions, dtype=torch.long)), entropy

    # ------------------------------------------------------------------------------ inference
    def decide(self, budget: float | None = None, greedy: bool = False, seed: int = 0):
        """A ``decide(rollout) -> (B, 3)`` callable for ``generator.sample(..., decisions=...)``.

        By default decisions are sampled, as in training, from random numbers fixed by ``seed``,
        the row's noise seed and its call index: the same sample always gets the same decisions,
        whatever batch it runs in. ``greedy`` takes the most likely level of each knob instead.
        """
        budget = self.config.budget if budget is None else float(budget)
        if not 0 < budget <= 1:
            raise HastenError(f"budget={budget}: expected a FLOPs fraction in (0, 1]")

        def decide(rollout):
            spent = None
            if self.config.cost_unit == "time":
                spent = time_spent(rollout.decisions.numpy(), self.config.time_table, rollout.num_steps)
            obs = torch.from_numpy(rollout.observation(budget, spent))
            uniforms = None
            if not greedy:
                calls = rollout.model_calls.tolist()
                uniforms = torch.stack([
                    torch.rand(len(KNOBS), generator=torch.Generator().manual_seed(
                        (seed * 1_000_003 + int(s)) * 1_024 + c)) for s, c in zip(rollout.seeds, calls)])
            return self.act(obs, greedy=greedy, uniforms=uniforms)[0].numpy()

        return decide

    def check_compatible(self, generator, where: str = "policy") -> None:
        """Raise a clear error when this policy was trained for another generator family or schedule."""
        family = getattr(generator.family, "name", generator.family)
        if self.config.family and self.config.family != family:
            raise HastenError(f"{where}: trained for the {self.config.family!r} generator family "
                              f"({self.config.generator or 'unknown generator'}); this generator is {family!r}")
        check_knobs = getattr(generator.family, "check_knobs", None)
        if check_knobs is not None:  # a family without a knob (a generic transformer without sparse attention)
            check_knobs({k.name: self.config.allowed_levels.get(k.name, range(len(k.levels))) for k in KNOBS}, where)
        current = {k.name: list(k.levels) for k in KNOBS}
        if set(self.config.knobs) != set(current) or any(
                list(levels) != current[name][:len(levels)] for name, levels in self.config.knobs.items()):
            raise HastenError(f"{where}: knob levels {self.config.knobs} are not the first levels of this "
                              f"hasten's {current}")

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str) -> None:
        """Write ``path/policy.safetensors`` and ``path/policy_config.json`` atomically."""
        import json

        from safetensors.torch import save_file

        with atomic_directory(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                      os.path.join(tmp, WEIGHTS_NAME))
            with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
                json.dump(dataclasses.asdict(self.config), f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str) -> Policy:
        """Load a policy folder, or a shipped policy by name (``embedded:shapes-budgets``,
        ``hasten policy list``); errors name the file and what was expected."""
        from hasten.config import from_dict
        from hasten.policies.shipped import resolve_policy_path

        path = resolve_policy_path(path)
        if not os.path.isdir(path):
            raise HastenError(f"{path}: policy folder not found (expected a folder with {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME}, written by `hasten train`)")
        config_file = os.path.join(path, CONFIG_NAME)
        config = from_dict(PolicyConfig, read_json(config_file), source=config_file)
        from hasten.tasks import (
            task_of_policy,  # (hasten.tasks builds policies of this module)
        )

        cls = task_of_policy(config, where=config_file).policy_class(config, where=config_file)
        policy = cls(config)
        weights = os.path.join(path, WEIGHTS_NAME)
        state = read_safetensors(weights)
        try:
            policy.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise HastenError(f"{weights}: weights do not match {CONFIG_NAME} "
                              f"({str(e).splitlines()[0]})") from e
        return policy.eval()


def load_policy(path: str, generator=None) -> Policy:
    """``Policy.from_pretrained(path)``, checked against ``generator`` when given."""
    policy = Policy.from_pretrained(path)
    if generator is not None:
        policy.check_compatible(generator, where=path)
    return policy



"""``hasten.accelerate(lm, policy)`` for a masked-diffusion LM: its ``generate`` decodes under the head.

Inside the context, :meth:`DiffusionLM.generate <hasten.tasks.unmasking.model.DiffusionLM.generate>` of
that model commits and reuses as the head decides (greedy, or sampled from per-row seeds); on exit the
instance attribute is removed, so the class's own ``generate`` (the full schedule) is back exactly.
"""

from __future__ import annotations

import numpy as np

from hasten.errors import HastenError
from hasten.tasks.unmasking.decode import CanvasDecoder
from hasten.tasks.unmasking.head import UnmaskingHead, is_unmasking_config
from hasten.tasks.unmasking.model import DiffusionLM


class UnmaskingAcceleration:
    """The context manager; ``stats`` holds the last ``generate``'s calls, FLOPs fraction and seconds per row."""

    def __init__(self, lm, policy, budget: float | None = None, greedy: bool = False, seed: int = 0, seeds=None):
        if not isinstance(lm, DiffusionLM):
            raise HastenError(f"hasten.accelerate: an unmasking head drives a hasten DiffusionLM "
                              f"(hasten.tasks.unmasking.model.load_dllm); got {type(lm).__name__}")
        if not isinstance(policy, UnmaskingHead) or not is_unmasking_config(policy.config):
            raise HastenError(f"hasten.accelerate: a policy of knobs {sorted(policy.config.knobs)} is not an "
                              "unmasking head (commit, reuse)")
        policy.check_compatible(lm, where="hasten.accelerate")
        if budget is not None and not 0 < budget <= 1:
            raise HastenError(f"budget={budget}: expected a FLOPs fraction of the full schedule in (0, 1]")
        self.lm, self.policy, self.budget, self.greedy = lm, policy, budget, greedy
        self.seed, self.seeds = seed, seeds
        self.stats: dict = {}

    def generate(self, problems) -> dict:
        decoder = CanvasDecoder(self.lm, problems)
        seeds = (np.asarray(self.seeds) if self.seeds is not None
                 else self.seed * 1_000_003 + np.arange(decoder.n))
        while not decoder.done.all():
            self.policy.step(decoder, self.budget, greedy=self.greedy, row_seeds=seeds)
        self.stats = {"calls": decoder.calls.copy(), "flops_fraction": decoder.cost_fraction.copy(),
                      "seconds": decoder.seconds}
        return self.lm.result(decoder)

    def __enter__(self):
        if "generate" in vars(self.lm):
            raise HastenError("hasten.accelerate: this model is already accelerated (nested contexts)")
        self.lm.generate = self.generate
        return self

    def __exit__(self, *exc):
        del self.lm.generate
        return False

"""The chain-of-thought length head: at each step boundary of a frozen LM's reasoning, continue or
stop and answer (DESIGN.md, "Reasoning: the knob").

A :class:`~hasten.policies.heads.Policy` with one two-level knob, ``think`` (continue, stop),
over the observation of ``hasten/Reasoning-v0`` (the LM's hidden state at the boundary, the
probability it gives to answering there, tokens and lines used, the budget). Trained by the same
GRPO trainer as the denoising heads; saved the same way, with the LM it was trained on and its
chain format (boundary marker, answer prefix) in ``policy_config.json``.
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.policies.heads import REASONING_KNOBS, Policy, PolicyConfig


def cot_policy_config(base: PolicyConfig, reasoner, budget: float) -> PolicyConfig:
    """``base`` (the experiment's ``policy`` section) completed for ``reasoner``."""
    import dataclasses

    from hasten.envs.reasoning import observation_columns

    meta = reasoner.meta
    return dataclasses.replace(base, knobs=dict(REASONING_KNOBS), observation=observation_columns(reasoner.hidden_size),
                               family=meta.family, generator=meta.name, num_steps=meta.max_steps, budget=budget,
                               cost_unit="flops", time_table=[],
                               chain_format={"boundary": meta.boundary, "answer_prefix": meta.answer_prefix,
                                             "hidden_size": reasoner.hidden_size,
                                             "max_think_tokens": meta.max_think_tokens})


class CoTLengthHead(Policy):
    """Continue/stop decisions at the step boundaries of a frozen LM's chain of thought."""

    def observation(self, hidden: np.ndarray, p_answer, think_tokens, steps, budget) -> np.ndarray:
        """(B, H + 4) observations as ``hasten/Reasoning-v0`` builds them, from the LM's hidden states
        at the rows' last tokens, P(answer prefix next), reasoning tokens and lines so far."""
        from hasten.envs.reasoning import build_observation

        return build_observation(hidden, p_answer, think_tokens, steps, budget,
                                 int(self.config.chain_format.get("max_think_tokens", 1)), self.config.num_steps)

    def choose(self, obs: np.ndarray, greedy: bool = False, threshold: float | None = None, seed: int = 0,
               row_seeds=None, steps=None) -> np.ndarray:
        """(B,) stop decisions from observations: sampled from uniforms fixed by (``seed``, the row's
        seed, its step index), so a problem gets the same decisions whatever batch it runs in;
        ``greedy`` stops when P(stop) > 0.5, ``threshold`` when P(stop) > threshold."""
        with torch.no_grad():
            p_stop = self.distributions(torch.from_numpy(obs))[0].probs[:, 1].numpy()
        if greedy or threshold is not None:
            return p_stop > (0.5 if threshold is None else threshold)
        n = len(p_stop)
        row_seeds = np.arange(n) if row_seeds is None else np.asarray(row_seeds)
        steps = np.zeros(n, dtype=np.int64) if steps is None else np.asarray(steps)
        u = np.array([torch.rand(1, generator=torch.Generator().manual_seed(
            (seed * 1_000_003 + int(s)) * 1_024 + int(k))).item() for s, k in zip(row_seeds, steps)])
        return u < p_stop

    def stop_decisions(self, decoder, budget: float | None = None, greedy: bool = False, seed: int = 0,
                       row_seeds=None, threshold: float | None = None) -> np.ndarray:
        """(B,) stop decisions for the rows of ``decoder`` (a ``ChainDecoder``) waiting at a boundary
        (see :meth:`choose`)."""
        budget = self.config.budget if budget is None else float(budget)
        obs = self.observation(decoder.hidden.cpu().numpy(), decoder.p_answer, decoder.think_tokens, decoder.steps,
                               budget)
        stop = self.choose(obs, greedy=greedy, threshold=threshold, seed=seed, row_seeds=row_seeds,
                           steps=decoder.steps)
        return stop & decoder.waiting

    def check_compatible(self, reasoner, where: str = "policy") -> None:
        """A clear error when this head was trained for another model family or LM."""
        family = getattr(reasoner.family, "name", reasoner.family)
        if self.config.family != family:
            raise HastenError(f"{where}: a chain-of-thought head trained for the {self.config.family!r} family "
                              f"({self.config.generator}); this model is {family!r}")
        hidden = getattr(reasoner, "hidden_size", None)
        fmt = self.config.chain_format
        if hidden is not None and fmt.get("hidden_size") not in (None, hidden):
            raise HastenError(f"{where}: trained on {self.config.generator} (hidden size {fmt.get('hidden_size')}); "
                              f"this model's hidden size is {hidden}")
        meta = getattr(reasoner, "meta", None)
        if meta is not None and self.config.generator and meta.name and self.config.generator != meta.name:
            raise HastenError(f"{where}: trained on {self.config.generator!r}; this model is {meta.name!r} "
                              "(a head reads the hidden states of the LM it was trained on)")

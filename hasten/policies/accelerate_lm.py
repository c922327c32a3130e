"""``hasten.accelerate(model, head)``: a chain-of-thought length head inside transformers' ``generate``.

``with hasten.accelerate(model, head, tokenizer=tok) as acc:`` makes ``model.generate(...)`` stop
thinking where the head says so: at each step boundary of each row (the boundary marker recorded
in the head's config, e.g. a newline), the head reads the LM's last hidden state there and decides
continue or stop; stop forces the answer prefix (budget forcing), the model writes its answer line,
then the row ends with EOS. A logits processor does the forcing (it only ever narrows a row's
next token to the one forced, so rows the head lets think are untouched: a never-stop head gives
plain ``generate``'s output); a forward hook on the base model reads the hidden states. Leaving the
context restores ``model.generate`` and removes the hook. ``acc.stats`` has, per row of the last
call, the reasoning tokens, chain lines, how the chain ended and the answer text.

Works with any causal LM whose prompt ends at a step boundary (the marker) and whose tokenizer can
write the marker and the answer prefix. Greedy or sampled decoding: the head decides either way.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from hasten.errors import HastenError

THINK, FORCE, ANSWER, DONE = range(4)


class ChainAcceleration:
    """The handle of ``with hasten.accelerate(model, head, tokenizer=...) as acc`` (see module docstring).

    Args:
        model: a transformers causal LM (``generate``), or a :class:`~hasten.models.reasoner.Reasoner`.
        policy: a :class:`~hasten.policies.cot.CoTLengthHead`.
        tokenizer: the model's tokenizer (taken from a Reasoner when not given).
        budget: the budget the head is conditioned on (default: its own).
        greedy: stop when P(stop) > 0.5 instead of sampling; ``threshold``: stop when P(stop) > threshold.
        seed, seeds: the random stream of sampled decisions (per row: ``seeds[i]``, default the row index).
        max_steps, max_think_tokens: force the answer after this many lines / reasoning tokens
            (default: the head's training limits; ``0`` for none).
    """

    def __init__(self, model, policy, tokenizer=None, budget: float | None = None, *, greedy: bool = False,
                 threshold: float | None = None, seed: int = 0, seeds=None, max_steps: int | None = None,
                 max_think_tokens: int | None = None):
        from hasten.policies.cot import CoTLengthHead

        if not isinstance(policy, CoTLengthHead):
            raise HastenError(f"policy: expected a chain-of-thought head (CoTLengthHead) for a causal LM, "
                              f"got {type(policy).__name__} (a denoising policy?)")
        reasoner = None
        if hasattr(model, "decoder") and hasattr(model, "meta"):  # a hasten Reasoner
            reasoner, model, tokenizer = model, model.model, tokenizer or model.tokenizer
        if not hasattr(model, "generate") or not hasattr(model, "config"):
            raise HastenError(f"model: expected a transformers causal LM with generate(), got {type(model).__name__}")
        if tokenizer is None:
            raise HastenError("tokenizer: required with a bare transformers model (to write the boundary marker "
                              "and the answer prefix)")
        fmt = policy.config.chain_format
        self.boundary, self.answer_prefix = fmt.get("boundary"), fmt.get("answer_prefix")
        if not self.boundary or not self.answer_prefix:
            raise HastenError("policy: its config records no chain format (boundary marker, answer prefix); "
                              "expected a head trained by `hasten train` on a reasoning experiment")
        hidden = int(model.config.hidden_size)
        if fmt.get("hidden_size") not in (None, hidden):
            raise HastenError(f"policy: trained on {policy.config.generator} (hidden size {fmt.get('hidden_size')}); "
                              f"this model's hidden size is {hidden}")
        if reasoner is not None:
            policy.check_compatible(reasoner, where="policy")
        self.boundary_ids = tokenizer.encode(self.boundary, add_special_tokens=False)
        self.answer_ids = tokenizer.encode(self.answer_prefix, add_special_tokens=False)
        if not self.boundary_ids or tokenizer.decode(self.boundary_ids) != self.boundary:
            raise HastenError(f"boundary marker {self.boundary!r}: this tokenizer cannot write it")
        if not self.answer_ids:
            raise HastenError(f"answer prefix {self.answer_prefix!r}: this tokenizer gives no token for it")
        self.model, self.policy, self.tokenizer = model, policy, tokenizer
        self.budget = policy.config.budget if budget is None else float(budget)
        if not 0 < self.budget <= 1:
            raise HastenError(f"budget={self.budget}: expected a fraction of the full chain in (0, 1]")
        self.greedy, self.threshold, self.seed, self.seeds = greedy, threshold, seed, seeds
        self.max_steps = policy.config.num_steps if max_steps is None else max_steps
        self.max_think_tokens = int(fmt.get("max_think_tokens", 0)) if max_think_tokens is None else max_think_tokens
        self.stats: dict[str, np.ndarray] = {}
        self._hidden = None
        self._hook = None
        self._original_generate = None

    # ------------------------------------------------------------------------------ context
    def __enter__(self) -> "ChainAcceleration":
        base = getattr(self.model, "base_model", None) or self.model

        def capture(module, args, output):
            states = output[0] if isinstance(output, tuple) else output.last_hidden_state
            self._hidden = states[:, -1].detach().float()

        self._hook = base.register_forward_hook(capture)
        self._original_generate = self.model.__dict__.get("generate")
        bound = self.model.generate

        @functools.wraps(bound)
        def generate(*args, **kwargs):
            from transformers import LogitsProcessorList

            processor = _ChainProcessor(self)
            kwargs["logits_processor"] = LogitsProcessorList(list(kwargs.get("logits_processor") or []) + [processor])
            out = bound(*args, **kwargs)
            self.stats = processor.stats()
            return out

        self.model.generate = generate
        return self

    def __exit__(self, *exc) -> bool:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._original_generate is None:
            self.model.__dict__.pop("generate", None)
        else:
            self.model.generate = self._original_generate
        self._hidden = None
        return False

    def __repr__(self) -> str:
        return f"ChainAcceleration(boundary={self.boundary!r}, answer_prefix={self.answer_prefix!r}, budget={self.budget})"


class _ChainProcessor:
    """The logits processor of one ``generate`` call: per-row chain state, head decisions, forcing."""

    def __init__(self, acc: ChainAcceleration):
        self.acc = acc
        self.prompt_len = None

    def _start(self, input_ids: torch.Tensor) -> None:
        n = input_ids.shape[0]
        self.prompt_len = input_ids.shape[1]
        self.phase = np.full(n, THINK)
        self.at_boundary = np.ones(n, dtype=bool)  # the prompt ends at a boundary
        self.line = [[] for _ in range(n)]
        self.answer = [[] for _ in range(n)]
        self.queue = [[] for _ in range(n)]
        self.steps = np.zeros(n, dtype=np.int64)
        self.think = np.zeros(n, dtype=np.int64)
        self.stopped_by = np.full(n, "", dtype=object)
        seeds = self.acc.seeds
        self.row_seeds = np.arange(n) if seeds is None else np.asarray(seeds)
        if len(self.row_seeds) != n:
            raise HastenError(f"seeds: {len(self.row_seeds)} given for a batch of {n} rows")

    def _consume(self, i: int, t: int) -> None:
        """Row ``i`` was given token ``t``: advance its chain state."""
        acc, tok = self.acc, self.acc.tokenizer
        if self.phase[i] == THINK:
            if not self.line[i] and t == acc.answer_ids[0]:  # the model answers by itself
                self.stopped_by[i] = "natural"
                self.phase[i] = ANSWER if len(acc.answer_ids) == 1 else FORCE
                self.queue[i] = list(acc.answer_ids[1:])
                return
            self.line[i].append(t)
            self.think[i] += 1
            if tok.decode(self.line[i]).endswith(acc.boundary):
                self.line[i] = []
                self.steps[i] += 1
                self.at_boundary[i] = True
        elif self.phase[i] == FORCE:
            self.queue[i].pop(0)
            if not self.queue[i]:
                self.phase[i] = ANSWER
        elif self.phase[i] == ANSWER:
            self.answer[i].append(t)
            if acc.boundary in tok.decode(self.answer[i]) or t == tok.eos_token_id:
                self.phase[i] = DONE

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        acc = self.acc
        if self.prompt_len is None:
            self._start(input_ids)
        elif input_ids.shape[1] > self.prompt_len:
            last = input_ids[:, -1].tolist()
            for i, t in enumerate(last):
                self._consume(i, int(t))
        deciding = self.at_boundary & (self.phase == THINK)
        if deciding.any():
            stop = self._decide(deciding, scores)
            for i in np.flatnonzero(deciding):
                self.at_boundary[i] = False
                if stop[i]:
                    self.phase[i], self.stopped_by[i] = FORCE, "policy" if self.stopped_by[i] == "" else self.stopped_by[i]
                    self.queue[i] = list(acc.answer_ids)
        forced = scores.clone()
        for i in range(scores.shape[0]):
            if self.phase[i] == FORCE and self.queue[i]:
                forced[i] = float("-inf")
                forced[i, self.queue[i][0]] = 0.0
            elif self.phase[i] == DONE and self.stopped_by[i] in ("policy", "limit") and \
                    acc.tokenizer.eos_token_id is not None:
                forced[i] = float("-inf")
                forced[i, acc.tokenizer.eos_token_id] = 0.0
        return forced

    def _decide(self, rows: np.ndarray, scores: torch.Tensor) -> np.ndarray:
        acc, policy = self.acc, self.acc.policy
        n = scores.shape[0]
        limit = np.zeros(n, dtype=bool)
        if acc.max_steps:
            limit |= self.steps >= acc.max_steps
        if acc.max_think_tokens:
            limit |= self.think >= acc.max_think_tokens
        self.stopped_by[rows & limit] = "limit"
        if acc._hidden is None or acc._hidden.shape[0] != n:
            raise HastenError("accelerate: no hidden state captured from the model's forward; expected a "
                              "transformers causal LM whose base_model returns last_hidden_state")
        p_answer = torch.softmax(scores.float(), dim=-1)[:, acc.answer_ids[0]].cpu().numpy()
        obs = policy.observation(acc._hidden.cpu().numpy(), p_answer, self.think, self.steps, acc.budget)
        stop = policy.choose(obs, greedy=acc.greedy, threshold=acc.threshold, seed=acc.seed,
                             row_seeds=self.row_seeds, steps=self.steps)
        return (stop | limit) & rows

    def stats(self) -> dict[str, np.ndarray]:
        if self.prompt_len is None:
            return {}
        tok = self.acc.tokenizer
        return {"think_tokens": self.think.copy(), "steps": self.steps.copy(),
                "stopped_by": np.array([s or "max_new_tokens" for s in self.stopped_by], dtype=object),
                "answers": np.array([tok.decode(a, skip_special_tokens=True) for a in self.answer], dtype=object)}

"""Batched, KV-cached, step-by-step decoding of a :class:`~hasten.models.reasoner.Reasoner`'s chains.

:class:`ChainDecoder` runs a batch of problems in lockstep, one token per forward call for every
row (rows that wait for a decision, or are done, feed a masked pad), greedy. Each row thinks line
by line; at each boundary the caller decides continue or stop; stop forces the answer prefix
and the model writes the answer (budget forcing, Muennighoff et al. 2025, "s1"). ``probe``
writes a trial answer on a copy of the cache (DEER's early exit), leaving the rows as they were.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from hasten.errors import HastenError

if TYPE_CHECKING:
    from hasten.models.reasoner import Reasoner

THINK, FORCE, ANSWER, DONE = range(4)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class ChainDecoder:
    """A batch of chains decoded in lockstep with one KV cache (see the module docstring).

    After construction and after each :meth:`advance`, every row is either done or waiting at a
    step boundary (``waiting``); ``hidden`` is the LM's last hidden state at each row's last token,
    ``p_answer`` the probability it gives to starting the answer there.
    """

    def __init__(self, reasoner: Reasoner, prompts: list[list[int]]):
        self.r, self.meta = reasoner, reasoner.meta
        tok, model, device = reasoner.tokenizer, reasoner.model, reasoner.device
        self.n = n = len(prompts)
        self.pad = tok.pad_token_id
        self.eos = tok.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        self.mask = mask.to(device)
        self.pos = torch.tensor([len(p) for p in prompts], device=device)
        position_ids = (self.mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=self.mask, position_ids=position_ids, use_cache=True,
                        output_hidden_states=True)
        self.cache = _cache_of(out)
        self.logits = out.logits[:, -1].float()
        self.hidden = out.hidden_states[-1][:, -1].float()
        self.phase = np.full(n, THINK)
        self.waiting = np.ones(n, dtype=bool)  # at a boundary, waiting for a decision
        self.steps = np.zeros(n, dtype=np.int64)  # boundaries passed (chain lines written)
        self.think_tokens = np.zeros(n, dtype=np.int64)
        self.answer_tokens = np.zeros(n, dtype=np.int64)
        self.forward_calls = 0
        self.stopped_by = np.full(n, "", dtype=object)  # "policy", "natural", "limit"
        self.chain = [[] for _ in range(n)]  # reasoning tokens
        self.answer = [[] for _ in range(n)]  # answer tokens (after the prefix)
        self._line = [[] for _ in range(n)]
        self._queue = [[] for _ in range(n)]
        self._apply_limits()

    # ------------------------------------------------------------------------------ state
    @property
    def done(self) -> np.ndarray:
        return self.phase == DONE

    @property
    def p_answer(self) -> np.ndarray:
        probs = torch.softmax(self.logits, dim=-1)
        return probs[:, self.r.answer_ids[0]].cpu().numpy()

    def answers(self) -> list[str]:
        return [self.r.tokenizer.decode(a, skip_special_tokens=True) for a in self.answer]

    def chains(self) -> list[str]:
        return [self.r.tokenizer.decode(c, skip_special_tokens=True) for c in self.chain]

    def _apply_limits(self) -> None:
        """Rows waiting at a boundary past the step or token limit are stopped (not a decision)."""
        over = self.waiting & ((self.steps >= self.meta.max_steps) | (self.think_tokens >= self.meta.max_think_tokens))
        for i in np.nonzero(over)[0]:
            self._stop(i, "limit")

    def _stop(self, i: int, why: str) -> None:
        self.phase[i], self.waiting[i], self.stopped_by[i] = FORCE, False, why
        self._queue[i] = list(self.r.answer_ids)

    # ------------------------------------------------------------------------------ decoding
    def _forward(self, feed: torch.Tensor, active: np.ndarray, cache, mask, pos, logits, hidden):
        """One token for the ``active`` rows (others feed a masked pad); returns the new mask."""
        device = self.r.device
        act = torch.from_numpy(active).to(device)
        tokens = torch.where(act, feed.to(device), torch.full_like(feed, self.pad).to(device))
        mask = torch.cat([mask, act.long()[:, None]], dim=1)
        with torch.no_grad():
            out = self.r.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                               use_cache=True, output_hidden_states=True,
                               cache_position=torch.tensor([mask.shape[1] - 1], device=device),
                               **{self.r.cache_arg: cache})
        self.forward_calls += 1
        logits[act] = out.logits[act, -1].float()
        hidden[act] = out.hidden_states[-1][act, -1].float()
        pos += act.long()
        return mask

    def _greedy(self, i: int, logits) -> int:
        return int(logits[i].argmax())

    def advance(self, stop) -> None:
        """Rows waiting at a boundary continue (``stop[i]`` False) or answer (True); then decode
        until every row is done or waiting at its next boundary."""
        stop = np.broadcast_to(np.asarray(stop, dtype=bool), (self.n,))
        for i in np.nonzero(self.waiting)[0]:
            if stop[i]:
                self._stop(i, "policy")
            else:
                self.waiting[i] = False
        tok = self.r.tokenizer
        while True:
            active = ~self.done & ~self.waiting
            if not active.any():
                break
            feed = torch.full((self.n,), self.pad, dtype=torch.long)
            for i in np.nonzero(active)[0]:
                if self.phase[i] == FORCE:
                    feed[i] = self._queue[i].pop(0)
                    continue
                t = self._greedy(i, self.logits)
                if self.phase[i] == THINK and not self._line[i] and t == self.r.answer_ids[0]:
                    # the model starts its answer by itself: the rest of the prefix, then the answer
                    self.phase[i], self.stopped_by[i] = FORCE, "natural"
                    self._queue[i] = list(self.r.answer_ids[1:])
                elif self.phase[i] == THINK and t == self.eos:
                    self.phase[i], self.stopped_by[i] = FORCE, "limit"
                    self._queue[i] = list(self.r.answer_ids)
                    t = self._queue[i].pop(0)
                feed[i] = t
            self.mask = self._forward(feed, active, self.cache, self.mask, self.pos, self.logits, self.hidden)
            for i in np.nonzero(active)[0]:
                t = int(feed[i])
                if self.phase[i] == THINK:
                    self.chain[i].append(t)
                    self._line[i].append(t)
                    self.think_tokens[i] += 1
                    if self._line_ended(i):
                        self._line[i] = []
                        self.steps[i] += 1
                        self.waiting[i] = True
                    elif self.think_tokens[i] >= self.meta.max_think_tokens:  # in the middle of a line
                        self._stop(i, "limit")
                        self._queue[i] = self.r.tokenizer.encode(self.meta.boundary, add_special_tokens=False) + \
                            list(self.r.answer_ids)
                elif self.phase[i] == FORCE:
                    self.answer_tokens[i] += 1
                    if not self._queue[i]:
                        self.phase[i] = ANSWER
                else:  # ANSWER
                    self.answer_tokens[i] += 1
                    if t == self.eos or self.meta.boundary in tok.decode(self.answer[i] + [t]) or \
                            len(self.answer[i]) + 1 >= self.meta.max_answer_tokens:
                        if t != self.eos:
                            self.answer[i].append(t)
                        self.phase[i] = DONE
                    else:
                        self.answer[i].append(t)
            self._apply_limits()

    def _line_ended(self, i: int) -> bool:
        if self.r.single_token_boundary is not None:
            return self._line[i][-1] == self.r.single_token_boundary
        return self.r.tokenizer.decode(self._line[i]).endswith(self.meta.boundary)

    def probe(self, rows) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Trial answers of the waiting ``rows`` on a copy of the cache (the rows are left as they were).

        Returns (answer texts, confidence = geometric mean of the greedy answer tokens'
        probabilities, tokens spent by each probe) for all rows (empty/0 where not probed).
        """
        rows = np.asarray(rows, dtype=bool) & self.waiting
        answers = [[] for _ in range(self.n)]
        logp = np.zeros(self.n)
        spent = np.zeros(self.n, dtype=np.int64)
        if not rows.any():
            return ["" for _ in range(self.n)], np.zeros(self.n), spent
        cache, mask, pos = copy.deepcopy(self.cache), self.mask.clone(), self.pos.clone()
        logits, hidden = self.logits.clone(), self.hidden.clone()
        queue = {i: list(self.r.answer_ids) for i in np.nonzero(rows)[0]}
        active = rows.copy()
        saved_calls = self.forward_calls
        tok = self.r.tokenizer
        while active.any():
            feed = torch.full((self.n,), self.pad, dtype=torch.long)
            for i in np.nonzero(active)[0]:
                if queue[i]:
                    feed[i] = queue[i].pop(0)
                else:
                    probs = torch.softmax(logits[i], -1)
                    t = int(probs.argmax())
                    logp[i] += float(torch.log(probs[t]))
                    feed[i] = t
            mask = self._forward(feed, active, cache, mask, pos, logits, hidden)
            for i in np.nonzero(active)[0]:
                t = int(feed[i])
                spent[i] += 1
                if spent[i] <= len(self.r.answer_ids):
                    continue
                if t == self.eos or self.meta.boundary in tok.decode(answers[i] + [t]) or \
                        len(answers[i]) + 1 >= self.meta.max_answer_tokens:
                    if t != self.eos:
                        answers[i].append(t)
                    active[i] = False
                else:
                    answers[i].append(t)
        self.forward_calls = saved_calls
        written = np.maximum(spent - len(self.r.answer_ids), 1)
        confidence = np.where(rows, np.exp(logp / written), 0.0)
        return [tok.decode(a, skip_special_tokens=True) for a in answers], confidence, spent


def run_chains(reasoner: Reasoner, problems: list, decide=None, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Decode ``problems`` in batches; ``decide(decoder, rows) -> (B,) stop`` at each boundary
    (``rows``: the problems' indices in this batch; None: never stop, the full chain).

    ``decide`` may call ``decoder.probe`` and must then add the probe tokens it spent to
    ``decoder.probe_tokens`` (counted in ``probe_tokens``). Returns per-problem arrays: ``correct``,
    ``think_tokens``, ``answer_tokens``, ``probe_tokens``, ``steps``, ``stopped_by``, ``answers``.
    """
    if not problems:
        raise HastenError("empty problem batch: expected at least one problem")
    out = {k: [] for k in ("correct", "think_tokens", "answer_tokens", "probe_tokens", "steps", "stopped_by",
                           "answers")}
    for start in range(0, len(problems), batch_size):
        part = problems[start:start + batch_size]
        decoder = reasoner.decoder([p.prompt() for p in part])
        decoder.probe_tokens = np.zeros(decoder.n, dtype=np.int64)
        rows = np.arange(start, start + len(part))
        while not decoder.done.all():
            decoder.advance(stop=False if decide is None else decide(decoder, rows))
        answers = decoder.answers()
        out["correct"].append([p.check(a) for p, a in zip(part, answers)])
        out["think_tokens"].append(decoder.think_tokens)
        out["answer_tokens"].append(decoder.answer_tokens)
        out["probe_tokens"].append(decoder.probe_tokens)
        out["steps"].append(decoder.steps)
        out["stopped_by"].append(decoder.stopped_by)
        out["answers"].append(answers)
    return {k: np.concatenate([np.asarray(v, dtype=object if k in ("stopped_by", "answers") else None)
                               for v in vs]) for k, vs in out.items()}

"""The reasoning adapter: a frozen causal LM, its tokenizer and its chain format, with batched,
KV-cached, step-by-step decoding that a policy can stop at any step boundary (DESIGN.md,
"Reasoning: the knob").

A reasoner folder (``embedded:arith``, or what ``hasten reasoner train`` writes) holds::

    hasten_reasoner.json   the chain format (boundary marker, answer prefix), limits, the recipe
    model/                 transformers save_pretrained (safetensors)
    tokenizer/             the tokenizer (vocab.json for the character-level one)

:class:`ChainDecoder` runs a batch of problems in lockstep, one token per forward call for every
row (rows that wait for a decision, or are done, feed a masked pad), greedy. Each row thinks line
by line; at each boundary the caller decides continue or stop; stop forces the answer prefix
and the model writes the answer (budget forcing, Muennighoff et al. 2025, "s1"). ``probe``
writes a trial answer on a copy of the cache (DEER's early exit), leaving the rows as they were.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hasten.errors import HastenError

META = "hasten_reasoner.json"
EMBEDDED_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "embedded")
EMBEDDED = {"arith": os.path.join(EMBEDDED_ROOT, "arith", "weights")}
THINK, FORCE, ANSWER, DONE = range(4)


@dataclass
class ReasonerMeta:
    """``hasten_reasoner.json``: what a policy and the env need to know about a reasoning LM."""

    name: str = ""  # e.g. embedded:arith
    family: str = "causal-lm"  # generator family (a policy refuses another family or model)
    problems: str = "arith"  # problem source: "arith" (procedural) or "jsonl" (question/answer file)
    problems_file: str = ""  # jsonl: one JSON object per line (e.g. GSM8K's question / answer)
    question_field: str = "question"  # jsonl: the field holding the problem text
    answer_field: str = "answer"  # jsonl: the field holding the answer (its last number; GSM8K's "#### 72")
    prompt_template: str = "{question}\n"  # jsonl: the prompt, ending where the first reasoning step starts
    boundary: str = "\n"  # the step-boundary marker in the chain
    answer_prefix: str = "A"  # text that forces the answer
    max_steps: int = 16  # chain lines before the answer is forced
    max_think_tokens: int = 200  # reasoning tokens before the answer is forced
    max_answer_tokens: int = 8  # answer tokens after the prefix
    tokenizer: str = "char"  # "char" (hasten's CharTokenizer) or "auto" (transformers AutoTokenizer)
    recipe: dict = field(default_factory=dict)  # how it was trained
    training: dict = field(default_factory=dict)  # what training measured

    def __post_init__(self):
        if not self.boundary:
            raise ValueError("boundary: expected a non-empty step-boundary marker, e.g. '\\n'")
        if not self.answer_prefix:
            raise ValueError("answer_prefix: expected the text that starts the answer, e.g. 'A'")
        for name in ("max_steps", "max_think_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        if self.tokenizer not in ("char", "auto"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: expected 'char' or 'auto'")
        if self.problems not in ("arith", "jsonl"):
            raise ValueError(f"problems={self.problems!r}: expected 'arith' or 'jsonl'")
        if self.problems == "jsonl" and not self.problems_file:
            raise ValueError("problems_file: missing; problems 'jsonl' needs a file of question/answer lines")
        if "{question}" not in self.prompt_template:
            raise ValueError(f"prompt_template={self.prompt_template!r}: expected a '{{question}}' placeholder")


def save_reasoner(path: str, model, tokenizer, recipe: dict | None = None, training: dict | None = None,
                  meta: ReasonerMeta | None = None) -> None:
    """Write a reasoner folder atomically."""
    import json

    from hasten.io import atomic_directory

    meta = meta or ReasonerMeta(name="embedded:arith")
    meta.recipe, meta.training = recipe or meta.recipe, training or meta.training
    with atomic_directory(path) as tmp:
        model.save_pretrained(os.path.join(tmp, "model"), safe_serialization=True)
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(asdict(meta), f, indent=2)


def resolve_reasoner_path(name_or_path: str) -> str:
    if name_or_path.startswith("embedded:"):
        name = name_or_path.split(":", 1)[1]
        if name not in EMBEDDED:
            raise HastenError(f"unknown embedded reasoner {name_or_path!r}: expected "
                              f"{', '.join('embedded:' + k for k in EMBEDDED)}")
        path = EMBEDDED[name]
        if not os.path.isfile(os.path.join(path, META)):
            raise HastenError(f"{path}: the embedded reasoner's files are missing; rebuild it with "
                              "`hasten reasoner train`")
        return path
    if not os.path.isdir(name_or_path):
        raise HastenError(f"{name_or_path}: reasoner not found; expected embedded:arith or a folder "
                          f"written by `hasten reasoner train` (holding {META})")
    if not os.path.isfile(os.path.join(name_or_path, META)):
        raise HastenError(f"{name_or_path}: not a reasoner folder ({META} missing)")
    return name_or_path


def _is_causal_lm_folder(path: str) -> bool:
    """A transformers checkpoint folder of a causal LM (config.json with a ``*ForCausalLM`` architecture)."""
    import json

    try:
        with open(os.path.join(path, "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


def is_reasoner(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a reasoning LM: ``embedded:arith``, a reasoner folder, or a
    transformers causal-LM folder (a real LLM; its chain format comes from ``generator_options``)."""
    if name_or_path.startswith("embedded:"):
        return name_or_path.split(":", 1)[1] in EMBEDDED
    return os.path.isfile(os.path.join(name_or_path, META)) or _is_causal_lm_folder(name_or_path)


def load_reasoner(name_or_path: str, device: str = "cpu", dtype: str = "float32", **overrides) -> "Reasoner":
    """``embedded:arith`` or a reasoner folder -> :class:`Reasoner`; ``overrides`` edit the meta
    (e.g. ``max_steps``, or a real LLM's ``boundary``/``answer_prefix``)."""
    from hasten.config import from_dict
    from hasten.io import read_json

    if not name_or_path.startswith("embedded:") and _is_causal_lm_folder(name_or_path) and \
            not os.path.isfile(os.path.join(name_or_path, META)):
        return _load_causal_lm(name_or_path, device, dtype, overrides)
    path = resolve_reasoner_path(name_or_path)
    meta_file = os.path.join(path, META)
    data = read_json(meta_file, ReasonerMeta)
    data.update(overrides)
    try:
        meta = from_dict(ReasonerMeta, data, source=meta_file)
    except (TypeError, ValueError) as e:
        raise HastenError(f"{meta_file}: {e}") from e
    if not meta.name:
        meta.name = name_or_path
    model_dir, tok_dir = os.path.join(path, "model"), os.path.join(path, "tokenizer")
    from transformers import AutoModelForCausalLM

    weights = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")] if os.path.isdir(model_dir) else []
    if not weights:
        raise HastenError(f"{model_dir}: no safetensors weights (expected transformers save_pretrained output)")
    from hasten.models.registry import _check_safetensors

    for f in weights:
        _check_safetensors(os.path.join(model_dir, f))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise HastenError(f"{model_dir}: cannot load the language model ({str(e).splitlines()[0]})") from e
    if meta.tokenizer == "char":
        from hasten.embedded.arith.data import CharTokenizer

        tokenizer = CharTokenizer.from_pretrained(tok_dir)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return Reasoner(model.to(device).eval().requires_grad_(False), tokenizer, meta)


def _load_causal_lm(path: str, device: str, dtype: str, overrides: dict) -> "Reasoner":
    """A real LLM from its transformers folder (user-provided weights; nothing is downloaded), with the
    chain format and the problem file given as options (``experiments/reasoning_r1_gsm8k.yaml``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        meta = ReasonerMeta(**{"name": path, "family": "causal-lm", "tokenizer": "auto", "problems": "jsonl",
                               **overrides})
    except (TypeError, ValueError) as e:
        raise HastenError(f"generator_options for {path}: {e}") from e
    if not hasattr(torch, dtype):
        raise HastenError(f"dtype={dtype!r}: expected a torch dtype name, e.g. bfloat16")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), use_safetensors=True)
        if meta.tokenizer == "char":
            from hasten.embedded.arith.data import CharTokenizer

            tokenizer = CharTokenizer.from_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise HastenError(f"{path}: cannot load the language model ({str(e).splitlines()[0]})") from e
    tokenizer.padding_side = "left"
    return Reasoner(model.to(device).eval().requires_grad_(False), tokenizer, meta)


class ProblemFile:
    """Problems from a JSON-lines file (``question_field`` / ``answer_field``; GSM8K's layout by default).

    ``select(seeds)`` picks problem ``seed % len`` for each seed; an answer is right when its first
    number equals the number the answer field ends with (GSM8K writes ``... #### 72``).
    """

    def __init__(self, meta: ReasonerMeta):
        import json

        path = meta.problems_file
        if not os.path.isfile(path):
            raise HastenError(f"problems_file {path}: not found (expected a .jsonl file of question/answer lines)")
        self.items = []
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    question, answer = row[meta.question_field], _last_number(str(row[meta.answer_field]))
                except (ValueError, KeyError, TypeError) as e:
                    raise HastenError(f"{path}:{number}: expected a JSON object with {meta.question_field!r} and "
                                      f"{meta.answer_field!r} (a number at its end) ({e})") from e
                self.items.append(TextProblem(meta.prompt_template.format(question=question), answer))
        if not self.items:
            raise HastenError(f"problems_file {path}: no problems in it")

    def select(self, seeds) -> list["TextProblem"]:
        return [self.items[int(s) % len(self.items)] for s in seeds]


def _numbers(text: str) -> list[float]:
    import re

    return [float(m.replace(",", "")) for m in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def _last_number(text: str) -> float:
    found = _numbers(text.split("####")[-1])
    if not found:
        raise ValueError(f"no number in {text[-40:]!r}")
    return found[-1]


@dataclass(frozen=True)
class TextProblem:
    """A problem of a :class:`ProblemFile`: its prompt and its numeric answer."""

    text: str
    answer: float
    difficulty: int = 0

    def prompt(self) -> str:
        return self.text

    def check(self, answer_text: str) -> bool:
        found = _numbers(answer_text)
        return bool(found) and abs(found[0] - self.answer) < 1e-6


class Reasoner:
    """A frozen causal LM with its tokenizer and chain format.

    Args:
        model: a transformers causal LM (left untouched; gradients off).
        tokenizer: its tokenizer (needs a pad token).
        meta: the chain format and limits.
    """

    def __init__(self, model, tokenizer, meta: ReasonerMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.problem_file = ProblemFile(meta) if meta.problems == "jsonl" else None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.answer_ids = tokenizer.encode(meta.answer_prefix, add_special_tokens=False)
        if not self.answer_ids:
            raise HastenError(f"answer_prefix={meta.answer_prefix!r}: the tokenizer gives no token for it")
        boundary_ids = tokenizer.encode(meta.boundary, add_special_tokens=False)
        if not boundary_ids or tokenizer.decode(boundary_ids) != meta.boundary:
            raise HastenError(f"boundary={meta.boundary!r}: the tokenizer cannot write this marker "
                              "(expected text the model writes between reasoning steps, e.g. '\\n')")
        self.single_token_boundary = boundary_ids[0] if len(boundary_ids) == 1 else None
        import inspect  # the KV cache argument was renamed past_key_values -> cache in transformers 5

        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def family(self):
        return self.meta.family

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def problems(self, conditions, seeds) -> list:
        """The problems of (condition, seed) pairs: for ``arith``, (difficulty 1..6, problem seed)."""
        if self.meta.problems == "arith":
            from hasten.embedded.arith.data import make_problem

            return [make_problem(int(c), int(s)) for c, s in zip(conditions, seeds)]
        return self.problem_file.select(seeds)

    def sample_conditions(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` conditions drawn from ``rng`` (difficulties uniform over 1..6 for ``arith``)."""
        if self.meta.problems == "arith":
            from hasten.embedded.arith.data import MAX_OPS

            return rng.integers(1, MAX_OPS + 1, size=n)
        return np.zeros(n, dtype=np.int64)

    @property
    def conditions(self) -> list[int]:
        """Every condition (for ``arith``: the difficulties)."""
        if self.meta.problems == "arith":
            from hasten.embedded.arith.data import MAX_OPS

            return list(range(1, MAX_OPS + 1))
        return [0]

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return [bos + self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]

    def decoder(self, prompts: list[str]) -> "ChainDecoder":
        if not prompts:
            raise HastenError("empty problem batch: expected at least one problem")
        return ChainDecoder(self, self.prompt_ids(prompts))

    def param_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


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

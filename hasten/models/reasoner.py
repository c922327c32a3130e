"""The reasoning adapter: a frozen causal LM, its tokenizer and its chain format, with batched,
KV-cached, step-by-step decoding that a policy can stop at any step boundary (DESIGN.md,
"Reasoning: the knob").

A reasoner folder (``embedded:arith``, or what ``hasten reasoner train`` writes) holds::

    hasten_reasoner.json   the chain format (boundary marker, answer prefix), limits, the recipe
    model/                 transformers save_pretrained (safetensors)
    tokenizer/             the tokenizer (vocab.json for the character-level one)

The batched decoding (:class:`ChainDecoder`, :func:`run_chains`) lives in
:mod:`hasten.models.chain_decoder`; both are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.models.chain_decoder import ANSWER, DONE, FORCE, THINK, ChainDecoder, run_chains

META = "hasten_reasoner.json"
EMBEDDED_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "embedded")
EMBEDDED = {"arith": os.path.join(EMBEDDED_ROOT, "arith", "weights")}
__all__ = ["ANSWER", "DONE", "FORCE", "THINK", "ChainDecoder", "ProblemFile", "Reasoner", "ReasonerMeta",
           "TextProblem", "is_reasoner", "load_reasoner", "resolve_reasoner_path", "run_chains", "save_reasoner"]


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
    """``embedded:arith`` or a reasoner folder -> the folder, with errors that say what is expected."""
    from hasten.models.registry import resolve_model_folder

    return resolve_model_folder(name_or_path, EMBEDDED, META, "reasoner", "hasten reasoner train")


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


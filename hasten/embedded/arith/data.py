"""``embedded:arith``'s data: procedural arithmetic problems written with step-by-step chains of
thought, and the character-level tokenizer of its language model (DESIGN.md, "Embedded defaults").

A problem of difficulty ``d`` has ``d`` operations (+ or -) over operands of 1 to 3 digits. Its
text, its chain and its answer are lines (the step boundary is the newline)::

    Q21+543-76          the problem: 12 + 345 - 67
    21+543=753          compute, left to right: 12 + 345 = 357
    753-76=092          357 - 67 = 290
    092+76=753          check, undoing each operation: 290 + 67 = 357
    753-543=21          357 - 345 = 12 (the first operand again: checked)
    A092                the answer: 290

Numbers are written least-significant digit first (Lee et al. 2023, "Teaching arithmetic to small
transformers"): a carry then depends only on digits already written, so a 1M-parameter model
learns the column additions. The chain has a compute phase (``d`` lines) and a check phase (``d``
lines that undo the operations), the way reasoning LLMs re-verify an answer they already have:
the full chain is twice as long as the computation needs, and an easy problem (one or two small
operations) is answered correctly with no chain at all. A policy that knows when to stop saves
both. The model is trained on full chains and on chains cut at a random line followed by the
answer line, so that it answers after any prefix of its reasoning (budget forcing).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from hasten.errors import HastenError

MAX_OPS = 6
MAX_OPERAND_DIGITS = 3
BOUNDARY = "\n"  # the step-boundary marker
ANSWER_PREFIX = "A"  # what forces the answer
PROMPT_PREFIX = "Q"
SPECIALS = ("<pad>", "<bos>", "<eos>")
CHARS = "0123456789+-=\nQA"


def _rev(n: int) -> str:
    return str(int(n))[::-1]


@dataclass(frozen=True)
class Problem:
    """``operands[0] op[0] operands[1] op[1] ...`` evaluated left to right."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def difficulty(self) -> int:
        return len(self.ops)

    def partials(self) -> list[int]:
        """The running value after each operation (the last one is the answer)."""
        value, out = self.operands[0], []
        for op, x in zip(self.ops, self.operands[1:]):
            value = value + x if op == "+" else value - x
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.partials()[-1]

    def prompt(self) -> str:
        """``Q`` + the expression + the boundary marker (numbers least-significant digit first)."""
        text = _rev(self.operands[0]) + "".join(op + _rev(x) for op, x in zip(self.ops, self.operands[1:]))
        return PROMPT_PREFIX + text + BOUNDARY

    def chain_lines(self) -> list[str]:
        """The full chain of thought: the compute lines, then the check lines (each ends with the marker)."""
        values = [self.operands[0]] + self.partials()
        lines = [f"{_rev(values[i])}{op}{_rev(x)}={_rev(values[i + 1])}{BOUNDARY}"
                 for i, (op, x) in enumerate(zip(self.ops, self.operands[1:]))]
        for i in range(len(self.ops) - 1, -1, -1):
            inverse = "-" if self.ops[i] == "+" else "+"
            lines.append(f"{_rev(values[i + 1])}{inverse}{_rev(self.operands[i + 1])}={_rev(values[i])}{BOUNDARY}")
        return lines

    def answer_line(self) -> str:
        return f"{ANSWER_PREFIX}{_rev(self.answer)}{BOUNDARY}"

    def check(self, answer_text: str) -> bool:
        """Whether an answer line's text (after the prefix) is this problem's answer."""
        return parse_answer(answer_text) == self.answer

    def readable(self) -> str:
        return str(self.operands[0]) + "".join(f" {op} {x}" for op, x in zip(self.ops, self.operands[1:]))


def make_problem(difficulty: int, seed: int) -> Problem:
    """The problem of ``difficulty`` operations drawn from ``seed`` (deterministic); values stay >= 0."""
    if not 1 <= int(difficulty) <= MAX_OPS:
        raise HastenError(f"difficulty={difficulty}: expected 1..{MAX_OPS} operations")
    rng = np.random.default_rng([int(seed), int(difficulty)])

    def operand():
        digits = int(rng.integers(1, MAX_OPERAND_DIGITS + 1))
        return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits))

    operands, ops = [operand()], []
    value = operands[0]
    for _ in range(int(difficulty)):
        x = operand()
        op = "-" if (x <= value and rng.random() < 0.5) else "+"
        value = value + x if op == "+" else value - x
        operands.append(x)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops))


def parse_answer(text: str) -> int | None:
    """The integer of an answer line's digits (least-significant first), None when it has none."""
    digits = ""
    for ch in text:
        if ch.isdigit():
            digits += ch
        elif digits:
            break
    return int(digits[::-1]) if digits else None


def training_text(problem: Problem, cut: int | None) -> tuple[str, str]:
    """(prompt, completion): the full chain (``cut=None``) or its first ``cut`` lines, then the answer."""
    lines = problem.chain_lines()
    if cut is not None:
        lines = lines[:cut]
    return problem.prompt(), "".join(lines) + problem.answer_line()


# ----------------------------------------------------------------------------- tokenizer
def _tokenizer_base():
    from transformers import PreTrainedTokenizer

    return PreTrainedTokenizer


class CharTokenizer(_tokenizer_base()):
    """One token per character of :data:`CHARS`, plus ``<pad>``, ``<bos>`` and ``<eos>``.

    A ``transformers.PreTrainedTokenizer``, so trl and ``generate`` take it like any tokenizer;
    saved as ``vocab.json`` (no code, no pickle).

    Example:
        >>> tok = CharTokenizer()
        >>> tok.decode(tok.encode("Q21+3\\n"), skip_special_tokens=True)
        'Q21+3\\n'
    """

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, tokens: list[str] | None = None, **kwargs):
        if vocab_file is not None:
            with open(vocab_file) as f:
                tokens = json.load(f)["tokens"]
        elif tokens is None:
            tokens = list(SPECIALS) + list(CHARS)
        self._tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        kwargs.setdefault("pad_token", "<pad>")
        kwargs.setdefault("bos_token", "<bos>")
        kwargs.setdefault("eos_token", "<eos>")
        kwargs.setdefault("padding_side", "left")
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise HastenError(f"text {text[:40]!r}: character(s) {unknown} are not in the tokenizer's "
                              f"alphabet {CHARS!r}")
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self._ids[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self._tokens[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(self, ids, ids_1=None):
        return [self.bos_token_id] + list(ids) + (list(ids_1) if ids_1 else [])

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w") as f:
            json.dump({"tokens": self._tokens}, f)
        return (path,)


# ----------------------------------------------------------------------------- training batches
def training_batch(tokenizer: CharTokenizer, rng: np.random.Generator, batch_size: int, cut_prob: float = 0.4):
    """(input_ids, labels) of random problems: prompt tokens are not trained on (label -100); a
    share ``cut_prob`` of the chains is cut at a random line and followed by the answer."""
    import torch

    rows, labels = [], []
    for _ in range(batch_size):
        problem = make_problem(int(rng.integers(1, MAX_OPS + 1)), int(rng.integers(0, 2**62)))
        cut = int(rng.integers(0, 2 * problem.difficulty)) if rng.random() < cut_prob else None
        prompt, completion = training_text(problem, cut)
        p = [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(list(prompt))
        c = tokenizer.convert_tokens_to_ids(list(completion)) + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((batch_size, width), -100, dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(y)] = torch.tensor(y)
    return ids, lab

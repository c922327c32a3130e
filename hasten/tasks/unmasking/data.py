"""The canvas of ``embedded:dllm``: an ``embedded:arith`` problem as a masked-diffusion LM decodes it.

A row is the prompt (``<bos>`` + the problem, left-padded to :data:`PROMPT_WIDTH`) followed by a canvas
of :data:`CANVAS` positions that starts all ``<mask>`` and ends holding the completion, then ``<eos>`` up
to the end (as LLaDA fills a canvas). The completion is the computation of the chain, one line per
operation, each partial value written once: the first line ``a+b=v1``, then ``+c=v2``, ``-d=v3``...; the
answer is the last line's value::

    <pad><pad><bos>Q21+543-76\n | 21+543=753\n-76=092\n<eos><eos>...

(``embedded:arith``'s chain repeats each value as the next line's first operand and again in the answer
line; a masked denoiser trained on that learns to copy a value from where it is repeated instead of
computing it, and then fails when every copy is still masked.) Problems are ``embedded:arith``'s
(:func:`~hasten.embedded.arith.data.make_problem`, same seeds), of 1 to :data:`MAX_OPS` operations: the
longest completion (43 characters) fits the canvas. Training batches mask each canvas position with a
probability ``t ~ U(0, 1)`` drawn per row (the masked-diffusion forward process); the denoiser learns the
masked tokens given the prompt and the rest of the canvas.
"""

from __future__ import annotations

import numpy as np
import torch

from hasten.embedded.arith.data import CHARS, SPECIALS, CharTokenizer, Problem, make_problem, parse_answer
from hasten.errors import HastenError

MAX_OPS = 4  # operations per problem (embedded:arith goes to 6; 4 keeps the canvas at 48 positions)
PROMPT_WIDTH = 24  # <bos> + the longest prompt (21 characters), left-padded
CANVAS = 48  # positions the denoiser fills
MASK = "<mask>"
TOKENS = list(SPECIALS) + list(CHARS) + [MASK]


def tokenizer() -> CharTokenizer:
    """``embedded:arith``'s character tokenizer with a ``<mask>`` token (the last id)."""
    tok = CharTokenizer(tokens=TOKENS, mask_token=MASK)
    return tok


def _rev(n: int) -> str:
    return str(int(n))[::-1]  # least-significant digit first, as embedded:arith writes numbers


def completion_text(problem: Problem) -> str:
    """``problem``'s computation, one line per operation, each partial value once (what the canvas ends holding)."""
    values = [problem.operands[0]] + problem.partials()
    lines = [f"{_rev(values[0])}{problem.ops[0]}{_rev(problem.operands[1])}={_rev(values[1])}\n"]
    lines += [f"{op}{_rev(x)}={_rev(v)}\n" for op, x, v in zip(problem.ops[1:], problem.operands[2:], values[2:])]
    return "".join(lines)


def problems(conditions, seeds) -> list[Problem]:
    """The problems of (difficulty, seed) pairs (``embedded:arith``'s, by the same seeds)."""
    out = []
    for d, s in zip(conditions, seeds):
        if not 1 <= int(d) <= MAX_OPS:
            raise HastenError(f"condition={int(d)}: embedded:dllm's problems have 1..{MAX_OPS} operations")
        out.append(make_problem(int(d), int(s)))
    return out


def prompt_ids(tok: CharTokenizer, batch: list[Problem]) -> torch.Tensor:
    """(B, PROMPT_WIDTH) int64: ``<pad>``... ``<bos>`` + each problem's prompt (a ``Problem`` or its prompt text)."""
    ids = torch.full((len(batch), PROMPT_WIDTH), tok.pad_token_id, dtype=torch.long)
    for i, p in enumerate(batch):
        text = p if isinstance(p, str) else p.prompt()
        if not text.startswith("Q") or len(text) + 1 > PROMPT_WIDTH:
            raise HastenError(f"prompt {text!r}: expected 'Q' + a problem of at most {PROMPT_WIDTH - 2} characters "
                              "+ newline (embedded:arith's format)")
        row = [tok.bos_token_id] + tok.convert_tokens_to_ids(list(text))
        ids[i, PROMPT_WIDTH - len(row):] = torch.tensor(row)
    return ids


def target_ids(tok: CharTokenizer, batch: list[Problem]) -> torch.Tensor:
    """(B, CANVAS) int64: each problem's completion, then ``<eos>`` to the end of the canvas."""
    ids = torch.full((len(batch), CANVAS), tok.eos_token_id, dtype=torch.long)
    for i, p in enumerate(batch):
        row = tok.convert_tokens_to_ids(list(completion_text(p)))
        if len(row) > CANVAS:
            raise HastenError(f"problem {p.readable()}: its completion has {len(row)} tokens; the canvas {CANVAS}")
        ids[i, :len(row)] = torch.tensor(row)
    return ids


def canvas_answer(tok: CharTokenizer, canvas: torch.Tensor) -> list[int | None]:
    """The answer of each decoded canvas row: the value of its last line before ``<eos>``, None when it has none."""
    answers = []
    for row in canvas.tolist():
        text = "".join(t for t in tok.convert_ids_to_tokens(row)).split("<eos>")[0]
        lines = [line for line in text.split("\n") if line]
        answers.append(parse_answer(lines[-1].rsplit("=", 1)[-1]) if lines and "=" in lines[-1] else None)
    return answers


def training_batch(tok: CharTokenizer, rng: np.random.Generator, batch_size: int):
    """(input_ids, labels) of fresh random problems: a share ``t ~ U(0, 1)`` of each row's canvas is
    masked (at least one position); labels are the masked positions' tokens, -100 elsewhere."""
    batch = [make_problem(int(rng.integers(1, MAX_OPS + 1)), int(rng.integers(0, 2**62))) for _ in range(batch_size)]
    target = target_ids(tok, batch)
    t = torch.from_numpy(rng.uniform(0.0, 1.0, size=(batch_size, 1)))
    masked = torch.from_numpy(rng.uniform(size=(batch_size, CANVAS))) < t
    masked[torch.arange(batch_size), torch.from_numpy(rng.integers(0, CANVAS, size=batch_size))] = True
    canvas = torch.where(masked, torch.full_like(target, tok.mask_token_id), target)
    labels = torch.where(masked, target, torch.full_like(target, -100))
    prompt = prompt_ids(tok, batch)
    return (torch.cat([prompt, canvas], dim=1),
            torch.cat([torch.full_like(prompt, -100), labels], dim=1))

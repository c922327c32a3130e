"""The "fine-tune everything" peer: trl's ``GRPOTrainer`` on ALL of a reasoning LM's parameters.

hasten's own answer to "when should the model stop thinking?" is a small policy head over a frozen
LM (:mod:`hasten.envs.reasoning`). The obvious alternative is to change the LM itself: sample
``G`` chains per problem, reward the right answer minus the length of the reasoning, and run GRPO
on every weight (DeepSeek-R1 style, with a length penalty as in L1 or "ThinkPrune"). This module is
that baseline, built from the library everyone would use for it (``trl.GRPOTrainer``, plain-text
prompts, generation with ``transformers.generate``), so that the comparison is against the
standard recipe and not against a home-made one.

The reward of a completion (:func:`length_penalised_reward`)::

    r = 1[answer right] - length_weight * reasoning_chars / full_chain_chars

where ``reasoning_chars`` counts the characters before the answer line (the first line that starts
with the answer prefix ``A``) and ``full_chain_chars`` those of the problem's gold full chain
(compute and check lines). A completion with no answer line scores ``0 - length_weight *
len(completion) / full_chain_chars``. Writing the whole chain and answering right scores
``1 - length_weight``; answering right with no chain at all scores 1.

Text after the answer line costs nothing in this reward (the reasoner's decoding stops at the end
of the answer line anyway); trl generates until ``<eos>`` or ``max_completion_length``.

The fine-tuned LM is written as a reasoner folder (:func:`hasten.models.reasoner.save_reasoner`)
with the input's chain format and limits, so the caller evaluates it exactly like the original::

    run_chains(load_reasoner(out), problems)   # the model writes its chain and answers by itself

Prompts are tokenised by trl as ``tokenizer(text=prompts)``, i.e. with the tokenizer's special
tokens: the character tokenizer adds ``<bos>``, which is what :meth:`Reasoner.prompt_ids` feeds
(checked at start-up). Generation stops at the model's ``<eos>``, which it writes after the answer
line.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
import torch

from hasten.errors import HastenError
from hasten.embedded.arith.data import ANSWER_PREFIX, BOUNDARY, parse_answer

logger = logging.getLogger(__name__)

REWARD_NAME = "length_penalised_reward"
EXTRA_COMPLETION_TOKENS = 4  # the answer prefix, the boundary after the answer, <eos>, one spare


# ----------------------------------------------------------------------------- the reward
def split_completion(text: str, answer_prefix: str = ANSWER_PREFIX, boundary: str = BOUNDARY
                     ) -> tuple[str, str | None]:
    """(reasoning, answer text) of a completion: the reasoning is everything before the first
    line that starts with ``answer_prefix``, the answer text that line after the prefix (None,
    and the whole completion as reasoning, when no line starts with the prefix).

    Example:
        >>> split_completion("12+3=42\\nA42\\n")
        ('12+3=42\\n', '42')
        >>> split_completion("12+3=4")
        ('12+3=4', None)
    """
    start = 0
    while start <= len(text):
        end = text.find(boundary, start)
        line = text[start:] if end < 0 else text[start:end]
        if line.startswith(answer_prefix):
            return text[:start], line[len(answer_prefix):]
        if end < 0:
            break
        start = end + len(boundary)
    return text, None


def length_penalised_reward(length_weight: float, answer_prefix: str = ANSWER_PREFIX, boundary: str = BOUNDARY):
    """A trl reward function: 1 for a right answer, minus ``length_weight`` times the reasoning's
    length as a share of the gold full chain's (see the module docstring).

    The returned ``f(prompts, completions, answer, full_chain_chars, **kwargs) -> list[float]``
    takes trl's plain-text completions (strings) and the dataset columns ``answer`` (the integer
    answer) and ``full_chain_chars`` (``len("".join(problem.chain_lines()))``), which trl passes
    as keyword lists, one value per completion.

    Example:
        >>> f = length_penalised_reward(0.5)
        >>> f(["Q"], ["A7\\n"], answer=[7], full_chain_chars=[10])
        [1.0]
        >>> f(["Q"], ["12345\\nA8\\n"], answer=[7], full_chain_chars=[10])
        [-0.3]
    """
    length_weight = float(length_weight)
    if not np.isfinite(length_weight) or length_weight < 0:
        raise HastenError(f"length_weight={length_weight}: expected a finite number >= 0 (the penalty per "
                          "full chain of reasoning)")

    def reward(prompts, completions, answer=None, full_chain_chars=None, **kwargs) -> list[float]:
        if answer is None or full_chain_chars is None:
            raise HastenError("length_penalised_reward: the dataset needs the columns 'answer' (the integer "
                              "answer) and 'full_chain_chars' (the gold full chain's length); got columns "
                              f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}")
        if len(answer) != len(completions) or len(full_chain_chars) != len(completions):
            raise HastenError(f"length_penalised_reward: {len(completions)} completions but {len(answer)} answers "
                              f"and {len(full_chain_chars)} chain lengths (expected one of each per completion)")
        out = []
        for text, right_answer, full in zip(completions, answer, full_chain_chars):
            if not isinstance(text, str):
                raise HastenError(f"length_penalised_reward: completion {text!r:.60} is not a string; expected "
                                  "plain-text prompts and completions (not conversational messages)")
            reasoning, answer_text = split_completion(text, answer_prefix, boundary)
            right = answer_text is not None and parse_answer(answer_text) == int(right_answer)
            out.append(float(right) - length_weight * len(reasoning) / max(1, int(full)))
        return out

    reward.__name__ = REWARD_NAME  # trl logs it as rewards/<name>/mean
    return reward


# ----------------------------------------------------------------------------- the data
def build_dataset(reasoner, train_problems: int, seed: int):
    """A ``datasets.Dataset`` of ``train_problems`` problems: difficulties cycling over the
    reasoner's conditions (1..6 for arith), problem seeds drawn from ``np.random.default_rng(seed)``.

    Columns: ``prompt`` (the problem's text), ``answer`` (int), ``full_chain_chars`` (int),
    ``difficulty`` (int).
    """
    from datasets import Dataset

    if reasoner.meta.problems != "arith":
        raise HastenError(f"reasoner {reasoner.name!r}: problems={reasoner.meta.problems!r}; the trl baseline "
                          "needs procedural problems with gold chains (problems='arith')")
    if train_problems < 1:
        raise HastenError(f"train_problems={train_problems}: expected at least 1 problem")
    conditions = reasoner.conditions
    difficulties = [conditions[i % len(conditions)] for i in range(train_problems)]
    seeds = np.random.default_rng(seed).integers(0, 2**62, size=train_problems)
    problems = reasoner.problems(difficulties, seeds)
    return Dataset.from_dict({
        "prompt": [p.prompt() for p in problems],
        "answer": [int(p.answer) for p in problems],
        "full_chain_chars": [len("".join(p.chain_lines())) for p in problems],
        "difficulty": [int(d) for d in difficulties],
    })


# ----------------------------------------------------------------------------- training
def _time_limit_callback(seconds: float):
    from transformers import TrainerCallback

    class WallClockStop(TrainerCallback):
        """Stops training at the first step end past ``seconds`` of wall-clock since training began."""

        def __init__(self):
            self.start = None
            self.fired = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.start >= seconds:
                self.fired = True
                control.should_training_stop = True

    return WallClockStop()


def _check_prompt_tokens(reasoner, prompt: str) -> None:
    """trl tokenises plain-text prompts as ``tokenizer(text=prompts)``: they must come out as the
    reasoner's own prompt ids (``<bos>`` + prompt), or the fine-tuned model learns on other inputs."""
    trl_ids = list(reasoner.tokenizer(text=[prompt])["input_ids"][0])
    ours = reasoner.prompt_ids([prompt])[0]
    if trl_ids != ours:
        raise HastenError(f"reasoner {reasoner.name!r}: its tokenizer gives trl the prompt ids {trl_ids[:12]}... "
                          f"but the reasoner feeds {ours[:12]}... (special tokens differ); a fine-tuned model "
                          "would be trained on other inputs than it is evaluated on")


def train_trl_grpo(reasoner_path: str, out: str, minutes: float, length_weight: float = 0.3,
                   num_generations: int = 8, batch_problems: int = 4, lr: float = 3e-5,
                   max_completion_length: int | None = None, seed: int = 0, max_steps: int = 10_000,
                   threads: int = 2, train_problems: int = 256, beta: float = 0.0,
                   temperature: float = 1.0) -> dict:
    """Fine-tune all of a reasoner's LM parameters with ``trl.GRPOTrainer`` and the
    length-penalised reward; save the result as a reasoner folder ``out``.

    Args:
        reasoner_path: ``embedded:arith`` or a reasoner folder (procedural arith problems).
        out: the reasoner folder to write (replaced atomically); its meta is the input's, named
            ``<input name>+trl-grpo``.
        minutes: wall-clock training budget; training stops at the first step end past it.
        length_weight: the reward's penalty for reasoning as long as the gold full chain.
        num_generations: completions sampled per problem (the GRPO group, >= 2).
        batch_problems: problems per optimiser step (a step sees ``batch_problems *
            num_generations`` completions).
        lr: AdamW learning rate (constant). On the 1M-parameter pilot LM, 1e-4 collapsed within
            ~25 steps to answering at once (10% accuracy), and the completions then grew long
            again after the answer line (the reward ignores what follows it); 1e-5 and 3e-5 were
            stable over 3 minutes, 3e-5 cutting the think tokens more.
        max_completion_length: tokens a completion may have; default the reasoner's
            ``max_think_tokens + max_answer_tokens`` + a few (prefix, boundary, ``<eos>``).
        seed: the problems' and trl's seed.
        max_steps: optimiser steps at most (the time budget usually stops first).
        threads: torch CPU threads during training (restored afterwards).
        train_problems: size of the problem set (cycled through in shuffled epochs).
        beta: KL coefficient to the input model (0: no reference model is kept).
        temperature: sampling temperature of the completions.

    Returns:
        ``steps_done``, ``train_seconds``, ``stopped_by`` (``"time"`` or ``"max_steps"``),
        ``reward_curve`` (mean reward of each step's completions), ``completion_length_curve``
        (their mean length in tokens), ``parameters_trained``, ``out`` and the settings.
    """
    from transformers import PrinterCallback, ProgressCallback
    from transformers import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from hasten.models.reasoner import load_reasoner, save_reasoner

    if not minutes > 0:
        raise HastenError(f"minutes={minutes}: expected a positive wall-clock budget")
    if num_generations < 2:
        raise HastenError(f"num_generations={num_generations}: GRPO needs at least 2 completions per problem")
    for name, value in (("batch_problems", batch_problems), ("max_steps", max_steps), ("threads", threads)):
        if value < 1:
            raise HastenError(f"{name}={value}: expected an integer >= 1")
    if not lr > 0:
        raise HastenError(f"lr={lr}: expected a positive learning rate")
    if not beta >= 0:
        raise HastenError(f"beta={beta}: expected a KL coefficient >= 0")
    if not temperature > 0:
        raise HastenError(f"temperature={temperature}: expected a positive sampling temperature")

    reasoner = load_reasoner(reasoner_path)
    meta = reasoner.meta
    reward = length_penalised_reward(length_weight, meta.answer_prefix, meta.boundary)
    dataset = build_dataset(reasoner, train_problems, seed)
    _check_prompt_tokens(reasoner, dataset[0]["prompt"])

    tok = reasoner.tokenizer
    if tok.eos_token_id is None:
        raise HastenError(f"reasoner {reasoner.name!r}: its tokenizer has no EOS token; generation could not stop")
    longest_prompt = max(len(ids) for ids in reasoner.prompt_ids(dataset["prompt"]))
    positions = getattr(reasoner.model.config, "max_position_embeddings", None)
    if max_completion_length is None:
        max_completion_length = meta.max_think_tokens + meta.max_answer_tokens + EXTRA_COMPLETION_TOKENS
        if positions:
            max_completion_length = min(max_completion_length, positions - longest_prompt)
    if max_completion_length < 1:
        raise HastenError(f"max_completion_length={max_completion_length}: expected at least 1 token")
    if positions and longest_prompt + max_completion_length > positions:
        raise HastenError(f"max_completion_length={max_completion_length}: with prompts of up to {longest_prompt} "
                          f"tokens it exceeds the model's max_position_embeddings={positions}")

    model = reasoner.model
    model.requires_grad_(True)
    base_generation_config = copy.deepcopy(model.generation_config)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    work = tempfile.mkdtemp(prefix="hasten-trl-grpo-")
    stopper = _time_limit_callback(minutes * 60)
    previous_verbosity = hf_logging.get_verbosity()
    try:
        args = GRPOConfig(
            output_dir=work,
            use_cpu=True,
            bf16=False,
            fp16=False,
            report_to=[],
            seed=int(seed),
            learning_rate=float(lr),
            lr_scheduler_type="constant",  # the budget is wall-clock: no schedule tied to max_steps
            max_steps=int(max_steps),
            per_device_train_batch_size=int(batch_problems) * int(num_generations),
            gradient_accumulation_steps=1,
            num_generations=int(num_generations),
            max_completion_length=int(max_completion_length),
            temperature=float(temperature),
            beta=float(beta),  # 0: no reference model, the clipped ratio is the only brake
            activation_checkpointing=False,  # trl turns it on by default; a small model only loses time
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        hf_logging.set_verbosity_error()  # trl's per-step warnings about the tiny model's config
        with warnings.catch_warnings():  # trl itself still calls the renamed is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                                  processing_class=tok, callbacks=[stopper])
            for printer in (PrinterCallback, ProgressCallback):  # the log dict of every step on stdout
                trainer.remove_callback(printer)
            start = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - start
        trained = trainer.accelerator.unwrap_model(trainer.model)
    finally:
        hf_logging.set_verbosity(previous_verbosity)
        torch.set_num_threads(previous_threads)
        shutil.rmtree(work, ignore_errors=True)

    logs = [e for e in trainer.state.log_history if "reward" in e]
    summary = {
        "steps_done": int(trainer.state.global_step),
        "train_seconds": round(train_seconds, 2),
        "stopped_by": "time" if stopper.fired else "max_steps",
        "reward_curve": [float(e["reward"]) for e in logs],
        "completion_length_curve": [float(e.get("completions/mean_length", float("nan"))) for e in logs],
        "parameters_trained": int(sum(p.numel() for p in trained.parameters() if p.requires_grad)),
        "out": out,
        "base": reasoner_path,
        "settings": {"length_weight": float(length_weight), "num_generations": int(num_generations),
                     "batch_problems": int(batch_problems), "lr": float(lr),
                     "max_completion_length": int(max_completion_length), "seed": int(seed),
                     "max_steps": int(max_steps), "minutes": float(minutes), "train_problems": int(train_problems),
                     "threads": int(threads), "beta": float(beta), "temperature": float(temperature)},
    }
    trained.eval().requires_grad_(False)
    trained.generation_config = base_generation_config  # not trl's sampling settings
    out_meta = copy.deepcopy(meta)
    out_meta.name = f"{meta.name}+trl-grpo"
    recipe = {**meta.recipe, "finetune": {"method": "trl-grpo", "base": reasoner_path, "base_name": meta.name,
                                          **summary["settings"]}}
    training = {**meta.training, "finetune": {k: summary[k] for k in ("steps_done", "train_seconds", "stopped_by",
                                                                     "parameters_trained")}}
    save_reasoner(out, trained, tok, recipe=recipe, training=training, meta=out_meta)
    logger.info("trl GRPO: %d steps in %.0f s, reward %.3f -> %.3f; saved %s", summary["steps_done"], train_seconds,
                summary["reward_curve"][0] if logs else float("nan"),
                summary["reward_curve"][-1] if logs else float("nan"), os.path.abspath(out))
    return summary

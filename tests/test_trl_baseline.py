"""The trl GRPO baseline (fine-tune every LM weight): the reward on hand-written completions, and a
two-step run of trl's GRPOTrainer on a tiny reasoner whose output loads and decodes."""

import numpy as np
import pytest
import torch
from tiny_reasoner import make_tiny_reasoner

from hasten.errors import HastenError
from hasten.embedded.arith.data import make_problem
from hasten.trainers.trl_baseline import length_penalised_reward, split_completion

torch.set_num_threads(1)


def test_split_completion_finds_the_answer_line():
    assert split_completion("12+3=42\n42-3=12\nA42\n") == ("12+3=42\n42-3=12\n", "42")
    assert split_completion("A7\n") == ("", "7")
    assert split_completion("A7") == ("", "7")
    assert split_completion("12+3=42\n") == ("12+3=42\n", None)  # no answer line: all reasoning
    assert split_completion("12A\n3") == ("12A\n3", None)  # the prefix must start a line


def test_reward_prefers_right_and_short():
    problem = make_problem(3, 7)
    lines, answer_line = problem.chain_lines(), problem.answer_line()
    full = len("".join(lines))
    wrong = answer_line[0] + str((problem.answer + 1) % 10) + answer_line[2:]  # a digit changed
    completions = ["".join(lines[:1]) + answer_line,  # right, short chain
                   "".join(lines) + answer_line,  # right, full chain
                   "".join(lines) + wrong,  # wrong, full chain
                   "".join(lines)]  # no answer line
    f = length_penalised_reward(0.3)
    r = f([problem.prompt()] * 4, completions, answer=[problem.answer] * 4, full_chain_chars=[full] * 4,
          trainer_state=None)  # trl also passes its own keywords
    assert r[0] > r[1] > r[2]
    assert r[1] == pytest.approx(0.7) and r[2] == pytest.approx(-0.3) and r[3] == pytest.approx(-0.3)
    assert r[0] == pytest.approx(1 - 0.3 * len(lines[0]) / full)
    assert f(["Q"], [answer_line], answer=[problem.answer], full_chain_chars=[full]) == [1.0]
    with pytest.raises(HastenError, match="length_weight"):
        length_penalised_reward(-1.0)
    with pytest.raises(HastenError, match="full_chain_chars"):
        f(["Q"], [answer_line], answer=[problem.answer])
    with pytest.raises(HastenError, match="plain-text"):
        f(["Q"], [[{"role": "assistant", "content": answer_line}]], answer=[1], full_chain_chars=[full])


def test_train_trl_grpo_fine_tunes_and_saves_a_reasoner(tmp_path):
    from hasten.models.reasoner import load_reasoner, run_chains
    from hasten.trainers.trl_baseline import train_trl_grpo

    base = make_tiny_reasoner(str(tmp_path / "r"))
    out = str(tmp_path / "ft")
    summary = train_trl_grpo(base, out, minutes=0.3, max_steps=2, num_generations=2, batch_problems=2,
                             train_problems=8, threads=1)
    assert summary["steps_done"] >= 1
    assert summary["reward_curve"] and all(np.isfinite(summary["reward_curve"]))
    assert len(summary["reward_curve"]) == summary["steps_done"]
    before, after = load_reasoner(base), load_reasoner(out)
    assert summary["parameters_trained"] == before.param_count() == after.param_count()
    changed = [name for (name, p), q in zip(before.model.named_parameters(), after.model.parameters())
               if not torch.equal(p, q)]
    assert changed, "no LM parameter changed"
    assert after.name == before.name + "+trl-grpo"
    assert (after.meta.boundary, after.meta.answer_prefix, after.meta.max_think_tokens) == \
        (before.meta.boundary, before.meta.answer_prefix, before.meta.max_think_tokens)
    assert after.meta.recipe["finetune"]["method"] == "trl-grpo"
    problems = after.problems([1, 3, 6], [11, 12, 13])
    res = run_chains(after, problems)
    for key in ("correct", "think_tokens", "steps", "answers"):
        assert len(res[key]) == 3


def test_train_trl_grpo_rejects_bad_settings(tmp_path):
    from hasten.trainers.trl_baseline import train_trl_grpo

    with pytest.raises(HastenError, match="num_generations"):
        train_trl_grpo(str(tmp_path / "nowhere"), str(tmp_path / "out"), minutes=1, num_generations=1)
    with pytest.raises(HastenError, match="reasoner not found"):
        train_trl_grpo(str(tmp_path / "nowhere"), str(tmp_path / "out"), minutes=1)

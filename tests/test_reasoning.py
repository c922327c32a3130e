"""Reasoning: embedded:arith's data and tokenizer, the chain decoder, hasten/Reasoning-v0, the
correctness and length terms, the chain-of-thought head and its GRPO training."""

import os

import numpy as np
import pytest
import torch

from hasten.errors import HastenError
from hasten.embedded.arith.data import CharTokenizer, make_problem, parse_answer, training_batch, training_text


# ----------------------------------------------------------------------------- data and tokenizer
def test_problems_are_deterministic_and_their_chains_are_right():
    for difficulty in range(1, 7):
        for seed in range(20):
            p = make_problem(difficulty, seed)
            assert p == make_problem(difficulty, seed)
            assert p.difficulty == difficulty and all(0 <= x < 1000 for x in p.operands)
            assert p.answer == eval(p.readable()) and min(p.partials()) >= 0
            lines = p.chain_lines()
            assert len(lines) == 2 * difficulty and all(line.endswith("\n") for line in lines)
            # compute lines end with the running values, the check lines undo them back to the first operand
            assert parse_answer(lines[difficulty - 1].split("=")[1]) == p.answer
            assert parse_answer(lines[-1].split("=")[1]) == p.operands[0]
            assert p.check(p.answer_line()[1:]) and not p.check(str(p.answer + 1)[::-1])
    assert make_problem(3, 1) != make_problem(3, 2)
    with pytest.raises(HastenError, match="difficulty"):
        make_problem(7, 0)


def test_tokenizer_round_trip_and_save_load(tmp_path):
    tok = CharTokenizer()
    p = make_problem(4, 9)
    prompt, completion = training_text(p, None)
    ids = tok.encode(prompt + completion)
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == prompt + completion
    assert len(ids) == 1 + len(prompt + completion)  # one token per character
    tok.save_pretrained(tmp_path)
    again = CharTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab() and again.encode("Q1+2\n") == tok.encode("Q1+2\n")
    with pytest.raises(HastenError, match="alphabet"):
        tok.encode("Q1*2")


def test_training_batches_mask_the_prompt_and_cut_chains():
    tok = CharTokenizer()
    ids, labels = training_batch(tok, np.random.default_rng(0), 32, cut_prob=0.5)
    assert ids.shape == labels.shape
    for row, lab in zip(ids, labels):
        text = tok.decode(row, skip_special_tokens=True)
        first = int((lab != -100).nonzero()[0])
        assert tok.decode(row[:first], skip_special_tokens=True) == text.split("\n")[0] + "\n"  # the prompt
        assert "\nA" in text and row[(lab != -100)][-1] == tok.eos_token_id


# ----------------------------------------------------------------------------- the chain decoder
def test_batched_decoding_equals_one_problem_at_a_time(tiny_reasoner):
    from hasten.models.reasoner import run_chains

    problems = tiny_reasoner.problems([1, 6, 3, 2, 5], [11, 12, 13, 14, 15])
    stop_at = lambda k: (lambda d, rows: d.waiting & (d.steps >= k))  # noqa: E731
    for decide in (None, stop_at(1), stop_at(3)):
        batched = run_chains(tiny_reasoner, problems, decide)
        single = [run_chains(tiny_reasoner, [p], decide) for p in problems]
        for key in ("think_tokens", "steps", "answers", "correct"):
            assert list(batched[key]) == [s[key][0] for s in single], key


def test_forced_answers_limits_and_probes(tiny_reasoner):
    from hasten.models.reasoner import run_chains

    problems = tiny_reasoner.problems([2, 4, 6], [1, 2, 3])
    out = run_chains(tiny_reasoner, problems, lambda d, rows: np.ones(d.n, bool))
    assert (out["think_tokens"] == 0).all() and (out["stopped_by"] == "policy").all()
    assert (out["answer_tokens"] >= 2).all()  # the forced prefix, then at least one token
    full = run_chains(tiny_reasoner, problems)
    meta = tiny_reasoner.meta
    assert (full["steps"] <= meta.max_steps).all() and (full["think_tokens"] <= meta.max_think_tokens).all()
    # a probe writes a trial answer on a copy of the cache: the rows go on exactly as without it
    decoder = tiny_reasoner.decoder([p.prompt() for p in problems])
    decoder.advance(stop=False)
    answers, confidence, spent = decoder.probe(decoder.waiting)
    assert ((confidence > 0) & (confidence <= 1))[decoder.waiting].all() and (spent[decoder.waiting] >= 2).all()
    while not decoder.done.all():
        decoder.advance(stop=False)
    assert decoder.think_tokens.tolist() == full["think_tokens"].tolist()
    assert decoder.answers() == list(full["answers"])


def test_reasoner_errors_are_clear(tmp_path, tiny_reasoner_dir):
    import shutil

    from hasten.models.reasoner import load_reasoner, run_chains

    with pytest.raises(HastenError, match="not found"):
        load_reasoner(str(tmp_path / "nothing"))
    with pytest.raises(HastenError, match="unknown embedded reasoner"):
        load_reasoner("embedded:chess")
    with pytest.raises(HastenError, match="alphabet|cannot write"):
        load_reasoner(tiny_reasoner_dir, boundary="<step>")
    with pytest.raises(HastenError, match="empty problem batch"):
        run_chains(load_reasoner(tiny_reasoner_dir), [])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_reasoner_dir, broken)
    (broken / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HastenError, match="safetensors"):
        load_reasoner(str(broken))


# ----------------------------------------------------------------------------- env and rewards
def test_reasoning_env_is_deterministic_and_groups_terminate_together(tiny_reasoner):
    from hasten.envs.reasoning import ReasoningVectorEnv

    def run(seed):
        env = ReasoningVectorEnv(num_envs=6, reasoner=tiny_reasoner, group_size=3)
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        trace, rewards, finish_step = [obs], np.zeros(6), np.full(6, -1)
        t = 0
        while not env.terminated.all():
            before = env.terminated.copy()
            obs, reward, terminated, truncated, info = env.step(rng.integers(0, 2, size=6))
            assert not truncated.any() and (reward[~terminated] == 0).all()
            finish_step[terminated & ~before] = t
            rewards += reward
            trace.append(obs)
            t += 1
        return np.stack(trace), rewards, finish_step, env

    a, ra, fa, env = run(7)
    b, rb, fb, _ = run(7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)
    assert fa[0] == fa[1] == fa[2] and fa[3] == fa[4] == fa[5]  # groups end together
    assert env.observation_space.shape == (6, tiny_reasoner.hidden_size + 4)


def test_length_shapes():
    from hasten.rewards import ReasoningInputs, build_reward

    inputs = ReasoningInputs(correct=torch.tensor([1.0, 1.0, 0.0, 0.0]), think_tokens=torch.tensor([10, 40, 5, 30]),
                             full_tokens=torch.tensor([40, 40, 40, 40]), budget=torch.tensor([0.5] * 4),
                             group=torch.tensor([0, 0, 1, 1]))
    linear = build_reward({"correctness": {"weight": 1.0}, "length": {"weight": 0.5, "mode": "linear"}})
    total, terms = linear(inputs)
    assert terms["correctness"].tolist() == [1, 1, 0, 0]
    np.testing.assert_allclose(total.numpy(), [1 - 0.125, 1 - 0.5, -0.0625, -0.375])
    _, terms = build_reward({"length": {"mode": "cap"}})(inputs)
    assert terms["length"].tolist() == [0, -1, 0, -1]
    _, terms = build_reward({"length": {"mode": "shortest"}})(inputs)
    np.testing.assert_allclose(terms["length"].numpy(), [0, -30 / 40, 0, -25 / 40])  # group 1: none correct
    with pytest.raises(HastenError, match="linear"):
        build_reward({"length": {"mode": "quadratic"}})


# ----------------------------------------------------------------------------- head and GRPO
def _experiment(tiny_reasoner_dir, **grpo):
    from hasten.trainers.grpo import load_experiment

    return load_experiment(None, [f"generator={tiny_reasoner_dir}", "name=reason", "train_pairs=12",
                                  "generator_options.max_steps=6", "generator_options.max_think_tokens=60",
                                  "logging.progress=false", "policy.init_probs.think=[0.7,0.3]",
                                  *[f"grpo.{k}={v}" for k, v in {"iterations": 2, "groups_per_iteration": 3,
                                                                 "group_size": 4, **grpo}.items()]])


def test_two_grpo_iterations_change_every_head_parameter(tmp_path, tiny_reasoner_dir):
    from hasten.policies.heads import load_policy
    from hasten.trainers.grpo import GRPOTrainer

    config = _experiment(tiny_reasoner_dir, lr=0.05)
    assert config.rewards == {"correctness": {"weight": 1.0}, "length": {"weight": 0.3, "mode": "linear"}}
    trainer = GRPOTrainer(config, str(tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    losses = []
    policy_dir = trainer.train(progress=False, on_iteration=lambda i, m: losses.append(m["losses/policy"]))
    for name, value in trainer.policy.state_dict().items():
        assert not torch.equal(before[name], value), f"{name} did not change"
    assert len(losses) == 2 and losses[0] != losses[1]
    m = [__import__("json").loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {"charts/accuracy", "charts/token_fraction", "rewards/length/mean", "policy/think/stop/t0"} <= set(m[-1])
    head = load_policy(policy_dir)
    assert type(head).__name__ == "CoTLengthHead" and head.config.chain_format["boundary"] == "\n"
    for name, value in trainer.policy.state_dict().items():
        assert torch.equal(head.state_dict()[name], value)


def test_a_head_refuses_another_model_and_a_denoiser(tmp_path, tiny_reasoner, tiny_generator_dir):
    from hasten.models import load_generator
    from hasten.policies.cot import CoTLengthHead, cot_policy_config
    from hasten.policies.heads import Policy, PolicyConfig, load_policy

    head = CoTLengthHead(cot_policy_config(PolicyConfig(), tiny_reasoner, 0.5))
    head.save_pretrained(str(tmp_path / "head"))
    with pytest.raises(HastenError, match="family"):
        load_policy(str(tmp_path / "head"), generator=load_generator(tiny_generator_dir))
    other = type(tiny_reasoner)(tiny_reasoner.model, tiny_reasoner.tokenizer, tiny_reasoner.meta)
    other.meta = type(tiny_reasoner.meta)(**{**tiny_reasoner.meta.__dict__, "name": "another-lm"})
    with pytest.raises(HastenError, match="another-lm"):
        load_policy(str(tmp_path / "head"), generator=other)
    dit = Policy(PolicyConfig(family="flux"))
    with pytest.raises(HastenError, match="family"):
        dit.check_compatible(tiny_reasoner)


def test_reasoning_experiment_errors(tmp_path, tiny_reasoner_dir):
    from hasten.trainers.grpo import GRPOTrainer, load_experiment

    config = load_experiment(None, [f"generator={tiny_reasoner_dir}", "rewards.fidelity.weight=1.0"])
    with pytest.raises(HastenError, match="denoising term"):
        GRPOTrainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_transformers_folder_with_a_problem_file(tmp_path, tiny_reasoner_dir):
    """A real LLM's path: a plain transformers causal-LM folder, its chain format and a JSONL problem file
    given as options (here the tiny model and its character tokenizer stand in for it)."""
    import json
    import shutil

    from hasten.embedded.arith.data import CharTokenizer
    from hasten.models.reasoner import is_reasoner, load_reasoner, run_chains

    folder = tmp_path / "lm"
    shutil.copytree(os.path.join(tiny_reasoner_dir, "model"), folder)
    CharTokenizer().save_pretrained(folder)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps({"q": f"{a}+{b}", "a": f"so #### {a + b}"}) for a, b in
                                  [(1, 2), (30, 4), (5, 60)]) + "\n")
    assert is_reasoner(str(folder))
    r = load_reasoner(str(folder), tokenizer="char", problems_file=str(problems), question_field="q",
                      answer_field="a", prompt_template="Q{question}\n", max_steps=3)
    picked = r.problems([0, 0, 0, 0], [0, 1, 2, 3])
    assert [p.prompt() for p in picked] == ["Q1+2\n", "Q30+4\n", "Q5+60\n", "Q1+2\n"] and picked[1].answer == 34
    assert picked[0].check("3 apples") and not picked[0].check("4") and not picked[0].check("none")
    out = run_chains(r, picked)
    assert len(out["correct"]) == 4 and (out["steps"] <= 3).all()
    with pytest.raises(HastenError, match="problems_file"):
        load_reasoner(str(folder), tokenizer="char", problems_file=str(tmp_path / "missing.jsonl"))
    problems.write_text('{"q": "1+2"}\n')
    with pytest.raises(HastenError, match="problems.jsonl:1"):
        load_reasoner(str(folder), tokenizer="char", problems_file=str(problems), question_field="q", answer_field="a")

"""The unmasking task (diffusion LMs) on a tiny random ModernBERT denoiser: canvas, dKV-cache forward,
batched decoding, env, GRPO, hasten.accelerate, compare, errors."""

import json

import gymnasium
import numpy as np
import pytest
import torch

import hasten
from hasten.errors import HastenError
from hasten.tasks.unmasking import data, peers
from hasten.tasks.unmasking.decode import CanvasDecoder, run_rule, threshold_commit
from hasten.tasks.unmasking.model import load_dllm


@pytest.fixture(scope="module")
def lm(tiny_dllm_dir):
    return load_dllm(tiny_dllm_dir)


def test_the_canvas_is_deterministic_by_seed_and_holds_every_completion():
    tok = data.tokenizer()
    a = data.training_batch(tok, np.random.default_rng(3), 8)
    b = data.training_batch(tok, np.random.default_rng(3), 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids, labels = a
    assert ids.shape == (8, data.PROMPT_WIDTH + data.CANVAS)
    assert (labels[:, :data.PROMPT_WIDTH] == -100).all()  # the prompt is never a target
    masked = ids == tok.mask_token_id
    assert torch.equal(masked, labels != -100) and masked.any(dim=1).all()
    problems = data.problems(np.repeat([1, 2, 3, 4], 500), np.arange(2000))
    assert max(len(data.completion_text(p)) for p in problems) < data.CANVAS
    target = data.target_ids(tok, problems[:50])
    assert data.canvas_answer(tok, target) == [p.answer for p in problems[:50]]
    with pytest.raises(HastenError, match="1..4 operations"):
        data.problems([5], [0])


def test_the_dkv_forward_is_the_models_own_and_recomputes_only_the_active_positions(lm):
    tok = lm.tokenizer
    ids, _ = data.training_batch(tok, np.random.default_rng(0), 3)
    with torch.no_grad():
        reference = lm.denoiser.reference_logits(ids)  # the model's own forward, full attention
    logits, cache = lm.full(ids)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    active = torch.tensor([[30, 40, 50]] * 3)
    cached, _ = lm.cached(ids, active, cache)  # nothing changed: the cached call gives the full call's logits
    torch.testing.assert_close(cached, logits[torch.arange(3)[:, None], active], atol=1e-5, rtol=1e-5)
    changed = ids.clone()
    changed[:, 60] = tok.eos_token_id  # a token the cache has not seen: the reuse is an approximation
    approx, _ = lm.cached(changed, active, cache)
    assert not torch.allclose(approx, lm.full(changed)[0][torch.arange(3)[:, None], active])
    assert lm.call_flops(3) < lm.call_flops(lm.length) / 20


def test_the_full_schedule_reproduces_its_reference_decode(lm):
    """One token per call, the most confident, decoded with the model's own forward one problem at a time."""
    problems = lm.problems([1, 2, 3, 4], [7, 8, 9, 10])
    decoder = run_rule(lm, problems, peers.full_schedule)
    assert (decoder.calls == lm.canvas).all() and np.allclose(decoder.cost_fraction, 1.0)
    for i, problem in enumerate(problems):
        ids = lm.start([problem])[0]
        for _ in range(lm.canvas):
            with torch.no_grad():
                logits = lm.canvas_logits(lm.denoiser.reference_logits(ids[None]))[0].float()
            logits[:, lm.mask_id] = -float("inf")
            conf, pred = logits.softmax(-1).max(-1)
            masked = ids[lm.prompt_width:] == lm.mask_id
            at = int(torch.where(masked, conf, torch.full_like(conf, -1)).argmax())
            ids[lm.prompt_width + at] = pred[at]
        assert torch.equal(ids, decoder.ids[i]), f"problem {i}"
    assert lm.generate(problems)["texts"] == lm.texts(decoder.ids)


def test_mixed_per_row_decisions_in_a_batch_equal_the_rows_decoded_alone(lm):
    problems = lm.problems([1, 2, 3, 4, 2, 3], [1, 2, 3, 4, 5, 6])
    levels = np.array([0, 3, 7, 5, 1, 4])  # commit levels per row; reuse on alternate calls, shifted per row

    def step(decoder, rows):
        reuse = (decoder.steps + rows) % 2 == 1
        from hasten.tasks.unmasking.env import commit_mask

        decoder.step(commit_mask(decoder, levels[rows]), reuse)

    batch = CanvasDecoder(lm, problems)
    while not batch.done.all():
        step(batch, np.arange(6))
    assert len(set(batch.calls.tolist())) > 1
    for i in range(6):
        alone = CanvasDecoder(lm, [problems[i]])
        while not alone.done.all():
            step(alone, np.array([i]))
        assert torch.equal(alone.ids[0], batch.ids[i]), f"row {i}"
        assert alone.calls[0] == batch.calls[i] and np.isclose(alone.flops[0], batch.flops[i])


def test_commit_rules():
    class Fake:
        n = 2
        canvas_masked = torch.tensor([[True, True, True, False], [True, False, True, True]])
        conf = torch.tensor([[0.95, 0.5, 0.99, 1.0], [0.2, 1.0, 0.3, 0.91]])

    assert threshold_commit(Fake, 0.9).tolist() == [[True, False, True, False], [False, False, False, True]]
    assert threshold_commit(Fake, float("inf"), 2).tolist() == [[True, False, True, False], [False, False, True, True]]
    assert threshold_commit(Fake, [float("inf"), -float("inf")]).tolist() == [[False, False, True, False],
                                                                             [True, False, True, True]]


def test_the_unmasking_env_passes_check_env_and_rewards_right_answers_and_budgets(tiny_dllm_dir):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make("hasten/Unmasking-v0", model=tiny_dllm_dir)
    check_env(env.unwrapped, skip_render_check=True)
    venv = gymnasium.make_vec("hasten/Unmasking-v0", num_envs=4, vectorization_mode="vector_entry_point",
                              model=tiny_dllm_dir, budget=0.2)
    obs, info = venv.reset(options={"conditions": [1, 2, 3, 4], "seeds": [0, 1, 2, 3]})
    assert obs.shape == (4, 16) and np.allclose(obs[:, -1], 0.2)
    total = np.zeros(4)
    while not venv.unwrapped.all_done():
        obs, reward, terminated, truncated, info = venv.step(np.tile([7, 0], (4, 1)))  # commit all at once
        total += reward
    batch = venv.unwrapped.episode_batch()
    canvas = venv.unwrapped.lm.canvas
    assert (batch["extra"]["calls"] == 1).all() and np.allclose(batch["cost_fraction"], 1 / canvas)
    # the default reward: correctness - 0.5 x (0.2 x shortfall) / budget
    expected = batch["extra"]["correct"] - 0.5 * 0.2 * (0.2 - 1 / canvas) / 0.2
    np.testing.assert_allclose(total, expected)
    with pytest.raises(HastenError, match="expected per row"):
        venv.reset()
        venv.step(np.tile([8, 0], (4, 1)))


def _experiment(dllm_dir, *extra):
    from hasten.trainers.grpo import load_experiment

    return load_experiment("experiments/dllm_budgets.yaml",
                           [f"generator={dllm_dir}", "train_pairs=16", "logging.progress=false", "rollouts.threads=1",
                            "grpo.iterations=2", "grpo.groups_per_iteration=2", "grpo.group_size=4", "grpo.lr=0.05",
                            *extra])


def test_two_grpo_iterations_change_every_head_parameter_and_the_loss(tmp_path, tiny_dllm_dir):
    from hasten.policies.heads import load_policy
    from hasten.trainers.grpo import GRPOTrainer

    trainer = GRPOTrainer(_experiment(tiny_dllm_dir), str(tmp_path / "run"))
    assert trainer.task.name == "unmasking"
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    losses = []
    policy_dir = trainer.train(progress=False, on_iteration=lambda i, m: losses.append(m["losses/policy"]))
    unchanged = [k for k, v in trainer.policy.state_dict().items() if torch.equal(before[k], v)]
    assert all(k.startswith("heads.reuse") for k in unchanged)  # the recipe holds reuse at "refresh"
    assert len(losses) == 2 and losses[0] != losses[1]
    m = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {"charts/accuracy", "charts/calls", "charts/call_fraction", "rewards/cost/mean", "steps/commit"} <= set(m[-1])
    head = load_policy(policy_dir)
    assert type(head).__name__ == "UnmaskingHead" and head.config.family == "masked-diffusion-lm"


def test_sampling_with_the_head_equals_the_envs_rollout_and_accelerate_restores_generate(tmp_path, tiny_dllm_dir, lm):
    from hasten.policies.heads import PolicyConfig
    from hasten.rollouts.inprocess import run_episodes
    from hasten.tasks.unmasking.env import UnmaskingVectorEnv
    from hasten.tasks.unmasking.head import UnmaskingHead, unmasking_policy_config

    torch.manual_seed(0)
    head = UnmaskingHead(unmasking_policy_config(PolicyConfig(), lm, 0.2))
    env = UnmaskingVectorEnv(num_envs=4, model=lm)
    rollout = run_episodes(env, head, [1, 2, 3, 4], [5, 6, 7, 8], np.full(4, 0.2), [11, 12, 13, 14])
    problems = lm.problems([1, 2, 3, 4], [5, 6, 7, 8])
    own = lm.generate
    with hasten.accelerate(lm, head, budget=0.2, seeds=[11, 12, 13, 14]) as acc:
        out = lm.generate(problems)
    assert lm.generate == own and "generate" not in vars(lm)  # restored exactly
    np.testing.assert_array_equal(out["calls"], rollout.extra["calls"])
    np.testing.assert_allclose(acc.stats["flops_fraction"], rollout.flops_fraction)
    assert out["calls"].max() < lm.canvas and (lm.generate(problems)["calls"] == lm.canvas).all()


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_dllm_dir, tiny_reasoner, lm):
    from hasten.policies.heads import Policy, PolicyConfig
    from hasten.tasks.unmasking.head import UnmaskingHead, unmasking_policy_config

    head = UnmaskingHead(unmasking_policy_config(PolicyConfig(), lm, 0.2))
    with pytest.raises(HastenError, match="unmasking head drives a hasten DiffusionLM .*; got Reasoner"):
        hasten.accelerate(tiny_reasoner, head)
    with pytest.raises(HastenError, match="not an unmasking head"):
        hasten.accelerate(lm, Policy(PolicyConfig(family="flux")))
    with pytest.raises(HastenError, match="not a diffusion LM folder"):
        load_dllm(str(tmp_path))
    with pytest.raises(HastenError, match="unknown embedded diffusion LM"):
        load_dllm("embedded:nope")
    with pytest.raises(HastenError, match="rewards.fidelity: not a term of the unmasking task"):
        _experiment(tiny_dllm_dir, "rewards.fidelity.weight=1")
        from hasten.trainers.grpo import GRPOTrainer

        GRPOTrainer(_experiment(tiny_dllm_dir, "rewards.fidelity.weight=1"), str(tmp_path / "r"))
    for error in (lambda: hasten.accelerate(lm, head, budget=1.5), lambda: lm.generate(["12+3"])):
        with pytest.raises(HastenError) as e:
            error()
        assert "\n" not in str(e.value)


def test_hasten_compare_task_unmasking_writes_json_table_plot_and_section(tmp_path, tiny_dllm_dir, lm):
    from hasten.cli import main
    from hasten.policies.heads import PolicyConfig
    from hasten.tasks.unmasking.head import UnmaskingHead, unmasking_policy_config

    head = UnmaskingHead(unmasking_policy_config(PolicyConfig(), lm, 0.2))
    head.save_pretrained(str(tmp_path / "policy"))
    out = tmp_path / "c.json"
    bench = tmp_path / "B.md"
    bench.write_text("# Benchmarks\n\n## other\n\nkept\n")
    args = ["compare", "--task", "unmasking", "--generator", tiny_dllm_dir, "--policy", str(tmp_path / "policy"),
            "--budgets", "0.1,0.3", "--n", "2", "--methods", "full,fixed-k,fast-dllm,entropy-bound,dkv,random,policy",
            "--timing-repeats", "1", "--timing-batches", "1", "--json", str(out), "--plot", str(tmp_path / "p.png"),
            "--benchmarks-md", str(bench), "--quiet"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    methods = {r["method"] for r in result["methods"]}
    assert methods == {"full", "fixed-k", "fast-dllm", "entropy-bound", "dkv", "random", "policy"}
    full = result["methods"][0]
    assert full["calls"] == lm.canvas and full["speedup_wall_batch1"] == 1.0
    k4 = next(r for r in result["methods"] if r["setting"] == "k=4")
    assert k4["calls"] == lm.canvas / 4
    dkv = next(r for r in result["methods"] if r["method"] == "dkv")
    assert dkv["calls"] == lm.canvas and dkv["flops_fraction"] < 0.9
    a = result["acceptance"]
    assert a["peer_points"] == 6 + 7 + 5 + 3 and a["matched_in_calls"] + len(a["missed_in_calls"]) == a["peer_points"]
    text = bench.read_text()
    assert "kept" in text and "## hasten compare on diffusion LMs" in text and (tmp_path / "p.png").stat().st_size
    assert main(["compare", "--task", "unmasking", "--from-json", str(out), "--quiet"]) == 0


def test_embedded_dllm_ships_with_its_recipe_and_full_schedule_accuracy():
    from hasten.config import from_dict, load_document
    from hasten.tasks.unmasking.recipe import DLLMRecipe

    lm = load_dllm("embedded:dllm")
    assert lm.name == "embedded:dllm" and lm.shift == 1 and lm.canvas == data.CANVAS
    recipe = from_dict(DLLMRecipe, load_document("experiments/dllm_generator.yaml"), source="recipe")
    shipped = lm.meta["recipe"]
    assert {k: shipped[k] for k in ("denoiser", "steps", "lr", "max_minutes", "seed")} == \
        {"denoiser": recipe.denoiser, "steps": recipe.steps, "lr": recipe.lr, "max_minutes": recipe.max_minutes,
         "seed": recipe.seed}
    assert lm.meta["training"]["full_schedule"]["accuracy"] >= 0.9
    problems = lm.problems([1, 2], [0, 1])
    assert lm.generate(problems)["answers"] == [p.answer for p in problems]

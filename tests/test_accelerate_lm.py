"""``hasten.accelerate(model, head)`` inside transformers' ``generate``."""

import numpy as np
import pytest
import torch

import hasten
from hasten.errors import HastenError
from hasten.policies.cot import CoTLengthHead, cot_policy_config
from hasten.policies.heads import Policy, PolicyConfig


def _head(reasoner, levels=None, seed=0):
    torch.manual_seed(seed)
    config = PolicyConfig(allowed_levels={"think": levels} if levels else {})
    return CoTLengthHead(cot_policy_config(config, reasoner, 0.5))


def _inputs(reasoner, n=5):
    problems = reasoner.problems([1, 2, 4, 6, 3][:n], [21, 22, 23, 24, 25][:n])
    return problems, reasoner.tokenizer([p.prompt() for p in problems], return_tensors="pt", padding=True)


def test_a_never_stop_head_reproduces_plain_generate_and_the_model_is_restored(tiny_reasoner):
    model, tok = tiny_reasoner.model, tiny_reasoner.tokenizer
    _, inputs = _inputs(tiny_reasoner)
    plain = model.generate(**inputs, max_new_tokens=80, do_sample=False)
    forwards = dict(model.__dict__)
    hooks = len(model.base_model._forward_hooks)
    with hasten.accelerate(model, _head(tiny_reasoner, levels=[0]), tokenizer=tok,
                           max_steps=0, max_think_tokens=0) as acc:
        inside = model.generate(**inputs, max_new_tokens=80, do_sample=False)
        assert len(model.base_model._forward_hooks) == hooks + 1
    assert torch.equal(plain, inside)
    assert "policy" not in set(acc.stats["stopped_by"])
    assert dict(model.__dict__).keys() == forwards.keys() and len(model.base_model._forward_hooks) == hooks
    assert torch.equal(model.generate(**inputs, max_new_tokens=80, do_sample=False), plain)


def test_a_stopping_head_forces_the_answer_like_the_env(tiny_reasoner):
    from hasten.models.reasoner import run_chains

    model, tok = tiny_reasoner.model, tiny_reasoner.tokenizer
    problems, inputs = _inputs(tiny_reasoner)
    with hasten.accelerate(tiny_reasoner, _head(tiny_reasoner, levels=[1])) as acc:
        out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
    texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.startswith("A") for t in texts) and (acc.stats["think_tokens"] == 0).all()
    expected = run_chains(tiny_reasoner, problems, lambda d, rows: np.ones(d.n, bool))
    assert [t[1:] for t in texts] == list(expected["answers"])
    # a sampled head: decisions per row; the same calls give the same stats
    head = _head(tiny_reasoner, seed=3)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    runs = []
    for _ in range(2):
        with hasten.accelerate(tiny_reasoner, head, seed=5) as acc:
            model.generate(**inputs, max_new_tokens=80, do_sample=False)
        runs.append(acc.stats["think_tokens"].tolist())
    assert runs[0] == runs[1]


def test_bad_inputs_are_clear_errors(tiny_reasoner):
    tok = tiny_reasoner.tokenizer
    with pytest.raises(HastenError, match="chain-of-thought head"):
        hasten.accelerate(tiny_reasoner.model, Policy(PolicyConfig()), tokenizer=tok)
    with pytest.raises(HastenError, match="tokenizer"):
        hasten.accelerate(tiny_reasoner.model, _head(tiny_reasoner))
    head = _head(tiny_reasoner)
    head.config.chain_format = {**head.config.chain_format, "boundary": "<step>"}
    with pytest.raises(HastenError, match="alphabet|cannot write"):
        hasten.accelerate(tiny_reasoner.model, head, tokenizer=tok)
    head = _head(tiny_reasoner)
    head.config.chain_format = {**head.config.chain_format, "hidden_size": 4096}
    with pytest.raises(HastenError, match="hidden size"):
        hasten.accelerate(tiny_reasoner.model, head, tokenizer=tok)

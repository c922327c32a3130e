import json
import os

import pytest
import torch

from hasten.errors import HastenError
from hasten.models.adapter import OBSERVATION
from hasten.policies import Policy, PolicyConfig, load_policy


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(family="flux", hidden=16))
    obs = torch.rand(5, len(OBSERVATION))
    path = str(tmp_path / "policy")
    policy.save_pretrained(path)
    assert sorted(os.listdir(path)) == ["policy.safetensors", "policy_config.json"]
    loaded = Policy.from_pretrained(path)
    for a, b in zip(policy(obs), loaded(obs)):
        torch.testing.assert_close(a, b)
    config = json.load(open(os.path.join(path, "policy_config.json")))
    assert config["knobs"]["cache_reuse"] == ["none", "deep_half", "all_but_first"] and config["family"] == "flux"


def test_incompatible_generator_family_is_a_clear_error(tmp_path, tiny_generator):
    path = str(tmp_path / "policy")
    Policy(PolicyConfig(family="sd3", generator="some-sd3")).save_pretrained(path)
    with pytest.raises(HastenError, match="trained for the 'sd3' generator family.*this generator is 'flux'"):
        load_policy(path, tiny_generator)


def test_broken_policy_files_are_clear_errors(tmp_path):
    with pytest.raises(HastenError, match="policy folder not found"):
        Policy.from_pretrained(str(tmp_path / "nothing"))
    path = tmp_path / "policy"
    Policy(PolicyConfig(family="flux")).save_pretrained(str(path))
    (path / "policy.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(HastenError, match="not a readable safetensors file"):
        Policy.from_pretrained(str(path))
    config = json.load(open(path / "policy_config.json"))
    config["hidden"] = "wide"
    (path / "policy_config.json").write_text(json.dumps(config))
    with pytest.raises(HastenError, match="hidden: expected an integer"):
        Policy.from_pretrained(str(path))


def test_masked_levels_are_never_chosen_and_init_probs_apply():
    policy = Policy(PolicyConfig(allowed_levels={"sparse_attention": [0]},
                                 init_probs={"step_skip": [0.7, 0.1, 0.1, 0.05, 0.03, 0.02]}))
    actions, logp = policy.act(torch.rand(500, len(OBSERVATION)), generator=torch.Generator().manual_seed(0))
    assert (actions[:, 2] == 0).all() and torch.isfinite(logp).all()
    share = (actions[:, 0] == 0).float().mean()
    assert 0.6 < share < 0.8
    with pytest.raises(ValueError, match="allowed_levels.cache_reuse"):
        PolicyConfig(allowed_levels={"cache_reuse": [3]})


def test_explicit_uniforms_make_row_decisions_batch_independent():
    policy = Policy(PolicyConfig())
    obs = torch.rand(4, len(OBSERVATION))
    u = torch.rand(4, 3)
    together, _ = policy.act(obs, uniforms=u)
    alone = torch.cat([policy.act(obs[i:i + 1], uniforms=u[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(together, alone)


def test_a_head_covers_the_levels_up_to_the_highest_allowed_and_old_policies_still_load(tiny_generator, tmp_path):
    config = PolicyConfig(family="flux", allowed_levels={"step_skip": [0, 2]},
                          init_probs={"step_skip": [0.2, 0.3, 0.5, 0.0, 0.0, 0.0]})
    assert Policy(config).heads["step_skip"].out_features == 6  # a policy built directly: every level
    policy = Policy(config.covering_allowed_levels())  # as the trainer builds it
    assert policy.knobs["step_skip"] == [0, 1, 2] and policy.heads["step_skip"].out_features == 3
    assert policy.knobs["cache_reuse"] == ["none", "deep_half", "all_but_first"]
    assert policy.config.init_probs["step_skip"] == [0.2, 0.3, 0.5]  # given for all levels: cut to the head's
    assert config.knobs["step_skip"] == [0, 1, 2, 3, 5, 7]  # (the original is left as it was)
    short = Policy(PolicyConfig(allowed_levels={"step_skip": [0, 2]}, init_probs={"step_skip": [0.2, 0.3, 0.5]}))
    torch.testing.assert_close(short.heads["step_skip"].bias[:3].softmax(0), torch.tensor([0.2, 0.3, 0.5]),
                               atol=0.01, rtol=0)
    policy.save_pretrained(str(tmp_path / "p"))
    loaded = load_policy(str(tmp_path / "p"), tiny_generator)  # (0, 1, 2) are this hasten's first levels
    assert loaded.knobs == policy.knobs
    with pytest.raises(ValueError, match=r"init_probs.step_skip=\[0.5, 0.5\]: expected 6 .* \(or 3, for"):
        PolicyConfig(allowed_levels={"step_skip": [0, 2]}, init_probs={"step_skip": [0.5, 0.5]})
    config = json.load(open(tmp_path / "p" / "policy_config.json"))
    config["knobs"]["step_skip"] = [0, 2, 4]
    (tmp_path / "p" / "policy_config.json").write_text(json.dumps(config))
    with pytest.raises(HastenError, match="are not the first levels"):
        load_policy(str(tmp_path / "p"), tiny_generator)


def test_policy_drives_the_sampler(tiny_generator):
    policy = Policy(PolicyConfig(family="flux", init_probs={"step_skip": [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]}))
    images, stats = tiny_generator.sample([0, 1], [0, 1], decisions=policy.decide(0.5))
    assert images.shape[0] == 2 and (stats["model_calls"] == 2).all()  # 6 steps, skipping 2 each call

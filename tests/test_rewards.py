import pytest
import torch

from hasten.errors import HastenError
from hasten.metrics import psnr, ssim
from hasten.rewards import Discriminator, RewardInputs, build_reward, get_reward


def _inputs(images, references, flops, budget):
    return RewardInputs(images=images, references=references, flops_fraction=torch.tensor(flops, dtype=torch.float64),
                        budget=torch.tensor(budget, dtype=torch.float64))


def test_fidelity_and_cost_by_hand():
    ref = torch.zeros(2, 3, 8, 8)
    img = ref.clone()
    img[1] += 0.2  # mse 0.04 -> PSNR = 10 log10(4 / 0.04) = 20 dB
    reward = build_reward({"fidelity": {"weight": 1.0, "cap": 45.0, "scale": 10.0},
                           "cost": {"weight": 2.0, "mode": "overshoot"}})
    total, terms = reward(_inputs(img, ref, [0.5, 0.3], [0.4, 0.4]))
    assert terms["fidelity"].tolist() == pytest.approx([4.5, 2.0], abs=1e-5)
    assert terms["cost"].tolist() == pytest.approx([-0.25, 0.0])  # (0.5 - 0.4) / 0.4 over budget
    assert total.tolist() == pytest.approx([4.5 - 0.5, 2.0], abs=1e-5)
    fraction = build_reward({"cost": {"mode": "fraction"}})
    assert fraction(_inputs(img, ref, [0.5, 0.3], [0.4, 0.4]))[0].tolist() == pytest.approx([-0.5, -0.3])
    # target: the overshoot, plus half the shortfall (0.4 - 0.3) / 0.4 = 0.25 -> -0.125
    target = build_reward({"cost": {"mode": "target", "undershoot": 0.5}})
    three = torch.zeros(3, 3, 8, 8)
    assert target(_inputs(three, three, [0.5, 0.3, 0.4], [0.4, 0.4, 0.4]))[0].tolist() == pytest.approx([-0.25, -0.125, 0])
    with pytest.raises(HastenError, match="undershoot=-1"):
        build_reward({"cost": {"mode": "target", "undershoot": -1}})


def test_ssim_and_psnr_metrics():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    noise = torch.randn_like(x)
    assert (ssim(x, x + 0.5 * noise) < ssim(x, x + 0.05 * noise)).all()
    assert (ssim(x, torch.rand_like(x) * 2 - 1) < 0.2).all()
    assert torch.isinf(psnr(x, x)).all()


def test_registry_errors_name_the_known_rewards():
    with pytest.raises(HastenError, match="unknown reward 'beauty'.*cost, discriminator, fidelity"):
        build_reward({"beauty": {"weight": 1.0}})
    with pytest.raises(HastenError, match="rewards.fidelity.metric='lpips'"):
        build_reward({"fidelity": {"metric": "lpips"}})
    with pytest.raises(HastenError, match="weight: expected a number"):
        build_reward({"fidelity": {"weight": "high"}})
    with pytest.raises(HastenError, match="every term has weight 0"):
        build_reward({"fidelity": {"weight": 0}})


def test_dotted_path_plugs_in_a_user_reward():
    cls = get_reward("hasten.rewards.terms:Cost")
    assert cls.registered_name == "cost"
    reward = build_reward({"hasten.rewards.terms:Cost": {"weight": 1.0, "mode": "fraction"}})
    total, _ = reward(_inputs(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), [0.25], [0.5]))
    assert total.tolist() == [-0.25]


def test_weight_zero_switches_a_term_off():
    reward = build_reward({"fidelity": {"weight": 1.0}, "discriminator": {"weight": 0}})
    assert "discriminator" not in reward.terms


def test_discriminator_learns_to_tell_full_from_accelerated():
    torch.manual_seed(0)
    disc = Discriminator(width=8, lr=1e-2, updates=1)
    full = torch.rand(16, 3, 16, 16) * 0.2 - 0.1  # smooth
    accelerated = torch.rand(16, 3, 16, 16) * 2 - 1  # noisy
    first = disc.update(full, accelerated)
    for _ in range(30):
        last = disc.update(full, accelerated)
    assert last < first * 0.5
    inputs_full = _inputs(full, full, [1.0] * 16, [1.0] * 16)
    inputs_fast = _inputs(accelerated, full, [0.3] * 16, [1.0] * 16)
    assert disc(inputs_full).mean() > 0.8 > 0.2 > disc(inputs_fast).mean()

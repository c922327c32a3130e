import numpy as np
import pytest
import torch

from hasten.errors import HastenError
from hasten.models.flux_pixel import image_ids, pack, text_ids, unpack


def hand_euler(gen, label, seed, num_steps, guidance):
    """The flow-matching Euler loop written out: sigmas 1 -> 0 (shift 1), CFG branches run apart."""
    sigmas = np.linspace(1.0, 1.0 / 1000, num_steps).tolist() + [0.0]
    x = pack(gen.noise([seed]))
    labels = torch.tensor([label])
    null = torch.tensor([gen.class_encoder.null_class])

    def v(lbl, s):
        tokens, pooled = gen.class_encoder(lbl)
        return gen.transformer(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled,
                               timestep=torch.tensor([s], dtype=torch.float32), img_ids=image_ids(32, 32),
                               txt_ids=text_ids(tokens.shape[1]), return_dict=False)[0]

    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            cond, uncond = v(labels, s), v(null, s)
            x = x + (s_next - s) * (uncond + guidance * (cond - uncond))
    return unpack(x, 32, 32).clamp(-1, 1)


def test_reference_sampler_is_the_euler_flow_loop(tiny_generator):
    images, stats = tiny_generator.sample([3], seeds=[11], num_steps=5, guidance=2.5)
    expected = hand_euler(tiny_generator, 3, 11, 5, 2.5)
    assert (images - expected).abs().max() <= 1e-5
    assert stats["model_calls"].tolist() == [5]


def test_rows_do_not_depend_on_their_batch(tiny_generator):
    conditions, seeds = ["red circle", "blue square", 7, "yellow plus"], [0, 1, 2, 3]
    batched, _ = tiny_generator.sample(conditions, seeds, num_steps=4)
    for i in range(4):
        alone, _ = tiny_generator.sample([conditions[i]], [seeds[i]], num_steps=4)
        assert (batched[i] - alone[0]).abs().max() <= 1e-5
    split, _ = tiny_generator.sample(conditions, seeds, num_steps=4, batch_size=3)
    assert (batched - split).abs().max() <= 1e-5


def test_seeds_and_classes_change_the_sample(tiny_generator):
    a, _ = tiny_generator.sample([0, 0, 5], [0, 1, 0], num_steps=3)
    assert (a[0] - a[1]).abs().max() > 1e-3
    assert (a[0] - a[2]).abs().max() > 1e-6
    assert a.shape == (3, 3, 32, 32) and a.min() >= -1 and a.max() <= 1


def test_defaults_come_from_the_generator_folder(tiny_generator):
    _, stats = tiny_generator.sample([0], [0])
    assert stats["model_calls"].tolist() == [tiny_generator.default_steps] == [6]


@pytest.mark.parametrize("kwargs, message", [
    (dict(conditions=["purple hexagon"], seeds=[0]), "unknown class 'purple hexagon'"),
    (dict(conditions=[99], seeds=[0]), "expected an index 0..15"),
    (dict(conditions=[0, 1], seeds=[0]), "differ in length"),
    (dict(conditions=[0], seeds=[0], num_steps=0), "num_steps=0"),
    (dict(conditions=[0], seeds=[0], guidance=float("nan")), "guidance=nan"),
])
def test_bad_input_is_a_clear_error(tiny_generator, kwargs, message):
    with pytest.raises(HastenError, match=message.replace("(", r"\(").replace(".", r"\.")):
        tiny_generator.sample(**kwargs)

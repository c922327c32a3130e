import torch
from diffusers import FluxPipeline

from hasten.models.flux_pixel import ClassEncoder, ClassEncoderConfig, image_ids, pack, unpack


def test_pack_matches_flux_pipeline_and_round_trips():
    x = torch.randn(2, 3, 8, 8)
    ours = pack(x)
    theirs = FluxPipeline._pack_latents(x, 2, 3, 8, 8)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(unpack(ours, 8, 8), x, rtol=0, atol=0)
    assert ours.shape == (2, 16, 12)


def test_image_ids_match_flux_pipeline():
    ids = image_ids(8, 8)
    theirs = FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    torch.testing.assert_close(ids, theirs)


def test_class_encoder_save_load(tmp_path):
    enc = ClassEncoder(ClassEncoderConfig(num_classes=3, num_tokens=2, token_dim=8, pooled_dim=4))
    tokens, pooled = enc(torch.tensor([0, 3]))
    assert tokens.shape == (2, 2, 8) and pooled.shape == (2, 4)
    enc.save_pretrained(str(tmp_path / "enc"))
    again = ClassEncoder.from_pretrained(str(tmp_path / "enc"))
    for a, b in zip(enc(torch.tensor([1]))[0], again(torch.tensor([1]))[0]):
        torch.testing.assert_close(a, b)

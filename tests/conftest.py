"""Shared fixtures: tiny randomly initialised generator folders and classifiers, on CPU."""

import os

import pytest
import torch

torch.set_num_threads(1)

TINY = dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16,
            num_text_tokens=2, cond_dim=16, num_steps=6, guidance_scale=3.0)


def make_tiny_generator(path: str, seed: int = 0, **overrides) -> str:
    """Export a randomly initialised tiny generator folder (the layout of `hasten generator train`)."""
    from hasten.embedded.shapes.recipe import GeneratorTrainConfig, build_models, export_generator

    config = GeneratorTrainConfig(seed=seed, **{**TINY, **overrides})
    transformer, encoder = build_models(config)
    # Random weights, but not the zero-initialised output layers of a fresh FLUX model, so that
    # the sampler's numbers actually depend on the network.
    with torch.no_grad():
        for p in transformer.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    export_generator(transformer, encoder, config, path, train_seconds=0.0)
    return path


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory):
    return make_tiny_generator(str(tmp_path_factory.mktemp("gen") / "model"))


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    from hasten.embedded.shapes.classifier import ShapesClassifier

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("cls") / "classifier")
    ShapesClassifier(width=4, feature_dim=8).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_generator(tiny_generator_dir):
    from hasten.models import load_generator

    return load_generator(tiny_generator_dir)


def embedded_available() -> bool:
    from hasten.models.registry import EMBEDDED

    return os.path.isfile(os.path.join(EMBEDDED["shapes"], "hasten_generator.json"))


@pytest.fixture(scope="session")
def tiny_reasoner_dir(tmp_path_factory):
    """A tiny reasoner folder (1-layer Llama trained a few seconds on embedded:arith's data)."""
    from tiny_reasoner import make_tiny_reasoner

    return make_tiny_reasoner(str(tmp_path_factory.mktemp("reasoner") / "tiny"))


@pytest.fixture(scope="session")
def tiny_reasoner(tiny_reasoner_dir):
    from hasten.models.reasoner import load_reasoner

    return load_reasoner(tiny_reasoner_dir, max_steps=6, max_think_tokens=60)


def make_tiny_dllm(path: str, seed: int = 0, kind: str = "modernbert") -> str:
    """Export a randomly initialised tiny diffusion-LM folder: a 2-layer ModernBERT masked LM, or
    (``kind="llama"``) a 2-layer Llama run with full attention, its logits predicting the next position."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hasten.tasks.unmasking import data
    from hasten.tasks.unmasking.model import build_denoiser, save_dllm

    torch.manual_seed(seed)
    tok = data.tokenizer()
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, tie_word_embeddings=True))
    else:
        model = build_denoiser(32, 2, 2, 64, tok)
    return save_dllm(path, model.eval(), tok, name=f"tiny-dllm-{kind}")


@pytest.fixture(scope="session", params=["modernbert", "llama"])
def tiny_dllm_dir(request, tmp_path_factory):
    return make_tiny_dllm(str(tmp_path_factory.mktemp("dllm") / request.param), kind=request.param)

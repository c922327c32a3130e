"""The frozen masked-diffusion LM of the unmasking task: a transformers model used as the denoiser of a
canvas (a ``ModernBertForMaskedLM``, or a ``LlamaForCausalLM`` adapted from an AR LM and run with full
attention, as Dream does), with a dKV-cache forward.

:class:`DiffusionLM` holds the model and its tokenizer and runs one denoiser call two ways:

- :meth:`DiffusionLM.full`: every position of the rows, the model's own computation (the same logits as
  its forward with full attention), keeping each layer's rotated keys and values;
- :meth:`DiffusionLM.cached`: only the ``active`` positions (the masked ones and those committed since
  their keys were last computed), attending over the kept keys and values of all the others
  (dKV-Cache's delayed caching, Ma et al. 2025): the linear layers and the attention cost scale with the
  active positions, which is where the FLOPs and the time go.

A diffusion-LM folder (what the recipe exports, :func:`save_dllm`) holds::

    hasten_dllm.json   name, family, canvas layout, the recipe and its training summary
    model/             the denoiser's save_pretrained (safetensors + config.json)
    tokenizer/         vocab.json
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from hasten.errors import HastenError
from hasten.io import atomic_directory, read_json, write_json_atomic
from hasten.models.registry import EMBEDDED_ROOT, resolve_model_folder
from hasten.tasks.unmasking import data

META = "hasten_dllm.json"
FAMILY = "masked-diffusion-lm"
EMBEDDED_DLLMS = {"dllm": os.path.join(EMBEDDED_ROOT, "dllm", "weights")}
RECIPE = "hasten generator train --config experiments/dllm_generator.yaml"


def is_dllm(name_or_path) -> bool:
    """Whether ``name_or_path`` names a diffusion LM (``embedded:dllm`` or a folder holding ``hasten_dllm.json``)."""
    if isinstance(name_or_path, DiffusionLM):
        return True
    if not isinstance(name_or_path, str):
        return False
    if name_or_path.startswith("embedded:"):
        return name_or_path.split(":", 1)[1] in EMBEDDED_DLLMS
    return os.path.isfile(os.path.join(name_or_path, META))


@dataclass
class KVCache:
    """Each layer's rotated keys and values of every position: (B, heads, T, head_dim) per layer."""

    keys: list
    values: list

    def rows(self, index: torch.Tensor) -> KVCache:
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values])

    def put_rows(self, index: torch.Tensor, other: KVCache) -> None:
        for mine, theirs in zip(self.keys + self.values, other.keys + other.values):
            mine[index] = theirs


class ModernBertDenoiser:
    """A ``ModernBertForMaskedLM``: the logits at a position predict its own token."""

    shift = 0

    def __init__(self, model):
        self.model, self.base = model, model.model

    def layers(self):
        return self.base.layers

    def embed(self, ids):
        return self.base.embeddings.norm(self.base.embeddings.tok_embeddings(ids))

    def rotary(self, hidden, positions):
        return self.base.rotary_emb(hidden, positions, "full_attention")

    def qkv(self, layer, hidden, heads, head_dim):
        b, a, _ = hidden.shape
        qkv = layer.attn.Wqkv(layer.attn_norm(hidden)).view(b, a, 3, heads, head_dim)
        return tuple(t.transpose(1, 2) for t in qkv.unbind(dim=2))

    def attn_out(self, layer, out):
        return layer.attn.Wo(out)

    def mlp(self, layer, hidden):
        return layer.mlp(layer.mlp_norm(hidden))

    def logits(self, hidden):
        return self.model.decoder(self.model.head(self.base.final_norm(hidden)))

    def reference_logits(self, ids):
        """The model's own forward (what :meth:`DiffusionLM.full` reproduces)."""
        return self.model(input_ids=ids).logits


class LlamaDenoiser:
    """A ``LlamaForCausalLM`` run with full (bidirectional) attention as a masked-diffusion denoiser, its
    logits at a position predicting the next token (Dream's and DiffuLLaMA's adaptation of an AR LM)."""

    shift = 1

    def __init__(self, model):
        self.model, self.base = model, model.model
        config = model.config
        self.kv_repeat = config.num_attention_heads // config.num_key_value_heads

    def layers(self):
        return self.base.layers

    def embed(self, ids):
        return self.base.embed_tokens(ids)

    def rotary(self, hidden, positions):
        return self.base.rotary_emb(hidden, positions)

    def qkv(self, layer, hidden, heads, head_dim):
        b, a, _ = hidden.shape
        x = layer.input_layernorm(hidden)
        att = layer.self_attn
        q = att.q_proj(x).view(b, a, -1, head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, a, -1, head_dim).transpose(1, 2).repeat_interleave(self.kv_repeat, dim=1)
        v = att.v_proj(x).view(b, a, -1, head_dim).transpose(1, 2).repeat_interleave(self.kv_repeat, dim=1)
        return q, k, v

    def attn_out(self, layer, out):
        return layer.self_attn.o_proj(out)

    def mlp(self, layer, hidden):
        return layer.mlp(layer.post_attention_layernorm(hidden))

    def logits(self, hidden):
        return self.model.lm_head(self.base.norm(hidden))

    def reference_logits(self, ids):
        full = torch.ones(ids.shape[0], 1, ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device)
        return self.model(input_ids=ids, attention_mask=full).logits


#: model_type -> the denoiser adapter of that transformers architecture
DENOISERS = {"modernbert": ModernBertDenoiser, "llama": LlamaDenoiser}


def denoiser_of(model):
    kind = getattr(model.config, "model_type", type(model).__name__)
    if kind not in DENOISERS:
        raise HastenError(f"a diffusion LM's denoiser is one of {', '.join(sorted(DENOISERS))} "
                          f"(transformers model_type); got {kind!r} ({type(model).__name__})")
    return DENOISERS[kind](model)


class DiffusionLM:
    """A frozen masked-diffusion LM over ``embedded:arith``'s problems (:mod:`hasten.tasks.unmasking.data`).

    Attributes:
        model: the transformers denoiser (eval mode, no gradients): a ``ModernBertForMaskedLM``, or a
            ``LlamaForCausalLM`` run bidirectionally (:data:`DENOISERS`).
        tokenizer: the character tokenizer with ``<mask>``.
        meta: the folder's ``hasten_dllm.json``.
        shift: 1 where the logits at position i predict token i + 1 (an adapted AR LM), else 0.
    """

    family = FAMILY

    def __init__(self, model, tokenizer, meta: dict):
        self.denoiser = denoiser_of(model)
        self.shift = self.denoiser.shift
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.meta = dict(meta)
        self.name = self.meta.get("name", "")
        self.prompt_width = int(self.meta.get("prompt_width", data.PROMPT_WIDTH))
        self.canvas = int(self.meta.get("canvas", data.CANVAS))
        self.conditions = list(range(1, int(self.meta.get("max_ops", data.MAX_OPS)) + 1))
        self.mask_id = tokenizer.mask_token_id
        config = model.config
        self.hidden_size, self.layers = config.hidden_size, config.num_hidden_layers
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        #: weights of the linear layers (one multiply-add per weight per position), counted once
        self.linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def length(self) -> int:
        return self.prompt_width + self.canvas

    # ------------------------------------------------------------------------- cost
    def token_flops(self, keys: int) -> float:
        """Multiply-add FLOPs (x2) of one query position through the denoiser, attending over ``keys`` positions."""
        return 2 * self.linear_weights + self.layers * 2 * 2 * keys * self.hidden_size  # + QK^T and AV

    def call_flops(self, active: int) -> float:
        """FLOPs of one denoiser call that computes ``active`` positions of a row (all: :attr:`length`)."""
        return active * self.token_flops(self.length)

    @property
    def full_schedule_flops(self) -> float:
        """FLOPs of a row's full schedule: one full call per canvas position (one token committed per step)."""
        return self.canvas * self.call_flops(self.length)

    # ------------------------------------------------------------------------- the denoiser
    def _attend(self, layer, hidden, cos, sin, keys=None, values=None, index=None):
        """One block on ``hidden`` (B, A, d); with ``keys``/``values`` (B, h, T, hd) the block's own keys and
        values are written at ``index`` (B, A) into copies of them and the queries attend over all."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        b, a, _ = hidden.shape
        q, k, v = self.denoiser.qkv(layer, hidden, self.heads, self.head_dim)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        if keys is not None:
            gather = index[:, None, :, None].expand(-1, self.heads, -1, self.head_dim)
            k = keys.scatter(2, gather, k)
            v = values.scatter(2, gather, v)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5)
        hidden = hidden + self.denoiser.attn_out(layer, out.transpose(1, 2).reshape(b, a, -1))
        return hidden + self.denoiser.mlp(layer, hidden), k, v

    @torch.no_grad()
    def full(self, ids: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """(logits (B, T, V), the keys and values of every position) of one denoiser call on ``ids`` (B, T)."""
        hidden = self.denoiser.embed(ids)
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        cos, sin = self.denoiser.rotary(hidden, positions)
        keys, values = [], []
        for layer in self.denoiser.layers():
            hidden, k, v = self._attend(layer, hidden, cos, sin)
            keys.append(k)
            values.append(v)
        return self.denoiser.logits(hidden), KVCache(keys, values)

    @torch.no_grad()
    def cached(self, ids: torch.Tensor, active: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """(logits (B, A, V) at the ``active`` positions (B, A), the cache with their keys and values updated)
        of one denoiser call that recomputes only those positions of ``ids`` and reuses ``cache`` for the rest."""
        hidden = self.denoiser.embed(ids.gather(1, active))
        cos, sin = self.denoiser.rotary(hidden, active)
        keys, values = [], []
        for layer, k_all, v_all in zip(self.denoiser.layers(), cache.keys, cache.values):
            hidden, k, v = self._attend(layer, hidden, cos, sin, k_all, v_all, active)
            keys.append(k)
            values.append(v)
        return self.denoiser.logits(hidden), KVCache(keys, values)

    def canvas_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The predictions of the canvas positions from a full call's logits (B, T, V)."""
        start = self.prompt_width - self.shift
        return logits[:, start:start + self.canvas]

    # ------------------------------------------------------------------------- problems
    def problems(self, conditions, seeds):
        return data.problems(conditions, seeds)

    def sample_conditions(self, rng, n: int):
        return rng.integers(1, len(self.conditions) + 1, size=n)

    def start(self, problems) -> torch.Tensor:
        """(B, T) rows: the prompts, then an all-``<mask>`` canvas."""
        prompt = data.prompt_ids(self.tokenizer, problems)
        canvas = torch.full((len(problems), self.canvas), self.mask_id, dtype=torch.long)
        return torch.cat([prompt, canvas], dim=1).to(self.device)

    def answers(self, ids: torch.Tensor) -> list:
        return data.canvas_answer(self.tokenizer, ids[:, self.prompt_width:].cpu())

    def generate(self, problems) -> dict:
        """Decode ``problems`` (``Problem`` objects or prompt strings) with the full schedule: one denoiser
        call per canvas position, committing the most confident masked token (what ``hasten.accelerate``
        replaces). Returns :meth:`result`."""
        from hasten.tasks.unmasking.decode import (  # (decode builds on this module)
            run_rule,
            threshold_commit,
        )

        return self.result(run_rule(self, problems, lambda d: threshold_commit(d, float("inf"), 1)))

    def result(self, decoder) -> dict:
        """What ``generate`` returns: canvases as text, answers, denoiser calls and FLOPs fraction per row."""
        return {"texts": self.texts(decoder.ids), "answers": decoder.answers(), "calls": decoder.calls.copy(),
                "flops_fraction": decoder.cost_fraction.copy()}

    def texts(self, ids: torch.Tensor) -> list[str]:
        """The canvases as text (``<eos>`` dropped, ``<mask>`` shown as ``_``)."""
        out = []
        for row in ids[:, self.prompt_width:].tolist():
            tokens = self.tokenizer.convert_ids_to_tokens(row)
            out.append("".join("_" if t == data.MASK else t for t in tokens if t != "<eos>"))
        return out


def build_denoiser(hidden: int, layers: int, heads: int, intermediate: int, tokenizer):
    """A randomly initialised ``ModernBertForMaskedLM`` for the canvas (global attention in every layer)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              max_position_embeddings=data.PROMPT_WIDTH + data.CANVAS, global_attn_every_n_layers=1,
                              local_attention=2 * (data.PROMPT_WIDTH + data.CANVAS), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              cls_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.eos_token_id,
                              embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return ModernBertForMaskedLM(config)


def save_dllm(out: str, model, tokenizer, **meta) -> str:
    """Write a diffusion-LM folder atomically (safetensors + JSON)."""
    with atomic_directory(out) as tmp:
        model.save_pretrained(os.path.join(tmp, "model"), safe_serialization=True)
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        write_json_atomic(os.path.join(tmp, META), {"family": FAMILY, "prompt_width": data.PROMPT_WIDTH,
                                                    "canvas": data.CANVAS, "max_ops": data.MAX_OPS, **meta})
    return out


def load_dllm(name_or_path, device: str | None = None) -> DiffusionLM:
    """``embedded:dllm`` or a diffusion-LM folder -> a frozen :class:`DiffusionLM`."""
    from transformers import AutoConfig, LlamaForCausalLM, ModernBertForMaskedLM

    from hasten.embedded.arith.data import CharTokenizer

    if isinstance(name_or_path, DiffusionLM):
        return name_or_path
    path = resolve_model_folder(name_or_path, EMBEDDED_DLLMS, META, "diffusion LM", RECIPE)
    meta = read_json(os.path.join(path, META))
    config = AutoConfig.from_pretrained(os.path.join(path, "model"))
    classes = {"modernbert": ModernBertForMaskedLM, "llama": LlamaForCausalLM}
    if config.model_type not in classes:
        raise HastenError(f"{path}/model: a {config.model_type!r} model; a diffusion LM's denoiser here is one of "
                          f"{', '.join(sorted(classes))}")
    model = classes[config.model_type].from_pretrained(os.path.join(path, "model"), attn_implementation="sdpa")
    tokenizer = CharTokenizer(vocab_file=os.path.join(path, "tokenizer", "vocab.json"), mask_token=data.MASK)
    if name_or_path.startswith("embedded:"):
        meta.setdefault("name", name_or_path)
    meta.setdefault("name", os.path.abspath(path))
    lm = DiffusionLM(model, tokenizer, meta)
    if device not in (None, "cpu"):
        lm.model.to(device)
    return lm

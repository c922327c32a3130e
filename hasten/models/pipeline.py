"""Generators backed by a real diffusers pipeline folder (FLUX.1-dev, SD3-medium, Wan 2.1, Qwen-Image,
FLUX.2 [dev]: the pipeline classes of :mod:`hasten.models.pipeline_spec`).

``hasten.load_generator("models/FLUX.1-dev", prompts_file="prompts.txt", resolution=1024)`` reads a
folder written by ``pipe.save_pretrained`` or ``huggingface-cli download`` (it holds
``model_index.json``) and returns a :class:`PipelineGenerator`: hasten's
:class:`~hasten.models.adapter.DiTGenerator` (the same reference and knob-driven samplers, env,
trainer and ``hasten.accelerate``) over the pipeline's own transformer, scheduler and prompts:

- conditions are the experiment's prompts (the "classes"): each prompt is encoded ONCE, at load, by
  the pipeline's own ``encode_prompt`` (CLIP + T5, UMT5, Qwen2.5-VL, Mistral-3; prompts padded to a
  common length keep their mask), and the text encoders are freed before the
  transformer is loaded; :class:`PromptTable` then maps a prompt index to its embeddings, with index
  ``len(prompts)`` the negative (empty) prompt of classifier-free guidance;
- the sampler runs in the VAE's latent space: latent channels from the transformer's config
  (FLUX packs 2x2 patches of 16 channels into 64), latent size ``resolution / vae_scale_factor``;
  one noise tensor per seed as for every hasten generator; fidelity and discriminator rewards
  compare latents (DESIGN.md, "Rewards"), and :meth:`PipelineGenerator.preview` decodes them with
  the VAE for sample grids;
- the schedule is the one the pipeline builds (``PipelineSpec.schedule``): FluxPipeline's and
  QwenImagePipeline's ``sigmas = linspace(1, 1/n, n)`` with the resolution-dependent shift
  ``mu = calculate_shift(image_seq_len, ...)`` of the scheduler config; Flux2Pipeline's with its
  empirical mu; StableDiffusion3Pipeline's default sigmas with its static (or dynamic) shift;
  WanPipeline's at its ``flow_shift`` (stepped by the Euler scheduler);
- guidance as the pipelines apply it: FLUX.1-dev's and FLUX.2's distilled guidance is an input of
  one call; SD3, Wan and Qwen-Image run [cond, uncond] rows of one call and mix them as the
  family says (``uncond + g * (cond - uncond)``, Qwen-Image rescaled to the conditional norm);
- video pipelines (Wan) sample clips (C, F, H, W): ``generator_options.frames`` pixel frames,
  ``(frames - 1) / 4 + 1`` latent frames; ``width`` makes images non-square.

With every knob off, a sample equals the pipeline's own ``output_type="latent"`` result for the same
prompt and initial latents (``tests/test_pipeline_generator.py``, ``test_wan_pipeline.py``,
``test_qwen_pipeline.py`` and ``test_flux2_pipeline.py`` check this on tiny random pipeline folders).

Example:
    >>> gen = load_pipeline_generator("models/FLUX.1-dev", prompts=["a red fox in the snow"],
    ...                               resolution=1024, dtype="bfloat16", device="cuda")  # doctest: +SKIP
    >>> latents, stats = gen.sample(["a red fox in the snow"], seeds=[0])  # doctest: +SKIP
    >>> latents.shape  # doctest: +SKIP
    torch.Size([1, 16, 128, 128])
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hasten.errors import HastenError
from hasten.models.adapter import DiTGenerator
from hasten.models.families import get_family
from hasten.models.pipeline_spec import PIPELINES, PipelineSpec, get_pipeline

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ENCODE_BATCH = 8  # prompts per encode_prompt call


@dataclass
class PipelineOptions:
    """``generator_options`` of an experiment whose generator is a diffusers pipeline folder."""

    prompts: list[str] = field(default_factory=list)  # the conditions (a prompt plays the role of a class)
    prompts_file: str = ""  # or a text file, one prompt per line (blank lines and '#' comments skipped)
    negative_prompt: str = ""  # the unconditional prompt of classifier-free guidance (SD3)
    resolution: int = 1024  # image height in pixels (latents: resolution / the VAE's scale factor)
    width: int = 0  # image width in pixels (0 = resolution: square)
    frames: int = 0  # video pipelines: frames per clip (0 = 81, Wan's default; latent frames (frames - 1) / 4 + 1)
    dtype: str = "auto"  # bfloat16 | float16 | float32 | auto (bfloat16 on CUDA, float32 on CPU)
    device: str = "auto"  # cuda | cuda:N | cpu | auto (cuda when available)
    max_sequence_length: int = 0  # T5 tokens per prompt (0 = the pipeline's default: 512 FLUX, 256 SD3)

    def __post_init__(self):
        if self.prompts and self.prompts_file:
            raise ValueError("both prompts and prompts_file are set; expected one of them")
        if self.resolution < 1:
            raise ValueError(f"resolution={self.resolution}: expected pixels, e.g. 1024")
        if self.width < 0 or self.frames < 0:
            raise ValueError(f"width={self.width}, frames={self.frames}: expected >= 0 (0 = the default)")
        if self.dtype not in (*DTYPES, "auto"):
            raise ValueError(f"dtype={self.dtype!r}: expected one of {[*DTYPES, 'auto']}")
        if self.max_sequence_length < 0:
            raise ValueError(f"max_sequence_length={self.max_sequence_length}: expected >= 0")

    def read_prompts(self) -> list[str]:
        """The prompts, from the list or the file (relative paths: to the current directory)."""
        where = "generator_options.prompts"
        prompts = [str(p).strip() for p in self.prompts]
        if self.prompts_file:
            where = f"generator_options.prompts_file: {self.prompts_file}"
            if not os.path.isfile(self.prompts_file):
                raise HastenError(f"{where}: file not found (relative paths are read from the current "
                                  f"directory, {os.getcwd()})")
            with open(self.prompts_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not prompts or any(not p for p in prompts):
            raise HastenError(f"{where}: no prompts (or an empty one); a pipeline generator needs the prompts it "
                              "is trained on, e.g. generator_options: {prompts: [\"a red fox in the snow\"]} "
                              "or {prompts_file: prompts.txt}")
        seen: dict[str, int] = {}
        for i, p in enumerate(prompts):
            if p in seen:
                raise HastenError(f"{where}: prompt {p!r} appears twice (entries {seen[p]} and {i}); "
                                  "each prompt is one condition")
            seen[p] = i
        return prompts

    def torch_device(self) -> torch.device:
        return torch_device(self.device)

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        return torch_dtype(self.dtype, device)


def torch_device(text: str) -> torch.device:
    """``generator_options.device`` (cuda, cuda:N, cpu, auto = CUDA when available) -> a device, or a
    one-line error where that device is not here."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise HastenError(f"generator_options.device={text!r}: expected cuda, cuda:N, cpu or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HastenError(f"generator_options.device={text!r}: CUDA is not available here (torch "
                          f"{torch.__version__}, {'a CPU-only build' if torch.version.cuda is None else 'no GPU'}"
                          "); install a CUDA build of torch on a GPU machine, or set "
                          "generator_options.device=cpu for a small model")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise HastenError(f"generator_options.device={text!r}: only {torch.cuda.device_count()} GPU(s) here")
    return device


def torch_dtype(text: str, device: torch.device) -> torch.dtype:
    """``generator_options.dtype`` (bfloat16, float16, float32, auto = bfloat16 on CUDA, float32 on the CPU)."""
    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if text not in DTYPES:
        raise HastenError(f"generator_options: dtype={text!r}: expected one of {[*DTYPES, 'auto']}")
    return DTYPES[text]


class PromptTable(nn.Module):
    """Prompt index -> (encoder_hidden_states (B, T, D), pooled_projections (B, P)), precomputed.

    The conditioning module of a pipeline generator, with :class:`~hasten.models.flux_pixel.ClassEncoder`'s
    interface: ``null_class`` (= the number of prompts) is the negative prompt, and ``config`` has
    the shape fields the cost tracer reads. Prompts padded to a common length (Qwen-Image's) keep
    their mask of real tokens (:meth:`text_mask`).

    Example:
        >>> table = PromptTable(torch.zeros(3, 5, 8), torch.zeros(3, 4))
        >>> tokens, pooled = table(torch.tensor([0, table.null_class]))
        >>> tuple(tokens.shape), tuple(pooled.shape), table.config.num_tokens, table.text_mask(torch.tensor([0]))
        ((2, 5, 8), (2, 4), 5, None)
    """

    def __init__(self, tokens: torch.Tensor, pooled: torch.Tensor, mask: torch.Tensor | None = None):
        super().__init__()
        if tokens.shape[0] != pooled.shape[0] or tokens.shape[0] < 2:
            raise HastenError(f"PromptTable: {tokens.shape[0]} token rows and {pooled.shape[0]} pooled rows; "
                              "expected one row per prompt plus the negative prompt")
        self.register_buffer("tokens", tokens.detach().clone())  # (P + 1, T, D)
        self.register_buffer("pooled", pooled.detach().clone())  # (P + 1, Pd)
        self.register_buffer("mask", None if mask is None or bool(mask.all()) else mask.bool().clone())
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_classes=tokens.shape[0] - 1, num_tokens=tokens.shape[1],
                                      token_dim=tokens.shape[2], pooled_dim=pooled.shape[1])

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[labels], self.pooled[labels]

    def text_mask(self, labels: torch.Tensor) -> torch.Tensor | None:
        """(B, T) bool, True for the real tokens of each row's prompt; None when no prompt is padded
        in the batch (the transformer then takes its unmasked path)."""
        if self.mask is None:
            return None
        rows = self.mask[labels]
        return None if bool(rows.all()) else rows


class PipelineGenerator(DiTGenerator):
    """A :class:`DiTGenerator` over a diffusers pipeline's transformer, schedule and encoded prompts.

    Attributes (besides :class:`DiTGenerator`'s): ``pipeline_class`` (``"FluxPipeline"`` ...),
    ``resolution`` (pixels), ``vae_scale_factor``, ``vae_config``; ``image_size`` and ``channels`` are
    the latent's.
    """

    def __init__(self, transformer, prompt_table: PromptTable, scheduler_config: dict, meta: dict, path: str,
                 vae_config: dict):
        super().__init__(transformer, prompt_table, scheduler_config, meta, path=path)
        self.pipeline_class: str = meta["pipeline"]
        self.spec: PipelineSpec = get_pipeline(self.pipeline_class)
        self.resolution: int = int(meta["resolution"])
        self.vae_scale_factor: int = int(meta["vae_scale_factor"])
        self.vae_config = dict(vae_config)
        self._vae = None

    def class_index(self, condition: str | int) -> int:
        """A prompt (exactly as in the options) or its index -> index; errors show a few prompts."""
        text = str(condition).strip()
        if not isinstance(condition, (int, np.integer)) and text in self.class_names:
            return self.class_names.index(text)  # a prompt first: "1984" may be a prompt
        if text.isdigit() and 0 <= int(text) < self.num_classes:
            return int(text)
        shown = "; ".join(repr(p) for p in self.class_names[:3]) + ("; ..." if self.num_classes > 3 else "")
        raise HastenError(f"unknown prompt {condition!r}: expected an index 0..{self.num_classes - 1} or one of the "
                          f"generator's prompts ({shown})")

    def image_seq_len(self) -> int:
        """Image tokens of one latent, as the pipeline counts them for its schedule shift."""
        return self.image_tokens()

    def make_scheduler(self, num_steps: int):
        """The scheduler exactly as the pipeline's ``__call__`` sets it up for this resolution (a
        flow-matching Euler scheduler: hasten's sampler steps it; WanPipeline's default UniPC
        multistep scheduler is replaced by the Euler one with the same flow shift)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = dict(self.scheduler_config)
        if "flow_shift" in config and "shift" not in config:  # a UniPC / DPM-Solver flow config (Wan's)
            config["shift"] = config["flow_shift"]
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.spec.schedule(scheduler, num_steps, self.image_seq_len())
        return scheduler

    # ----------------------------------------------------------------------------- pixels
    def vae(self):
        """The pipeline's VAE, loaded on first use (only previews need it)."""
        if self._vae is None:
            import diffusers

            vae_class = getattr(diffusers, self.spec.vae_class)
            self._vae = vae_class.from_pretrained(self.path, subfolder="vae", **_dtype_kwarg(self.dtype))
            self._vae.to(self.device).eval().requires_grad_(False)
        return self._vae

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, [f,] h, w) latents -> (N, 3, [F,] H, W) float32 images (clips) in [-1, 1] on the CPU,
        one at a time (the pipeline's own unscaling, then the VAE decoder)."""
        vae = self.vae()
        rows = [vae.decode(self.spec.unscale(vae, z[None].to(self.device, self.dtype)), return_dict=False)[0]
                for z in latents]
        return torch.cat(rows).float().cpu().clamp(-1, 1) if rows else torch.empty(0, 3, 0, 0)

    def preview(self, images: torch.Tensor, max_size: int = 256) -> torch.Tensor:
        """Decoded RGB in [-1, 1] of latent samples, at most ``max_size`` pixels a side (sample grids)."""
        rgb = self.decode(images)
        if rgb.ndim == 5:  # clips: the middle frame
            rgb = rgb[:, :, rgb.shape[2] // 2]
        if rgb.shape[-1] > max_size:
            rgb = torch.nn.functional.interpolate(rgb, size=(max_size, max_size), mode="area")
        return rgb


# ----------------------------------------------------------------------------- loading
def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` where diffusers deprecated ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def is_pipeline_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_INDEX))


def _pipeline_class(path: str) -> str:
    from hasten.io import read_json

    index = read_json(os.path.join(path, MODEL_INDEX))
    name = index.get("_class_name")
    get_pipeline(name, where=os.path.join(path, MODEL_INDEX))
    for part in ("transformer", "scheduler", "vae"):
        if not os.path.isdir(os.path.join(path, part)):
            raise HastenError(f"{path}: the {name} has no {part}/ folder; expected a complete pipeline "
                              "(pipe.save_pretrained or huggingface-cli download)")
    return name


@torch.no_grad()
def _encode_prompts(path: str, pipeline_class: str, prompts: list[str], negative: str, max_sequence_length: int,
                    device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the pipeline's own ``encode_prompt`` over ``prompts + [negative]``; only the text encoders are
    loaded (and freed on return)."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    try:
        pipe = cls.from_pretrained(path, transformer=None, vae=None, **_dtype_kwarg(dtype))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HastenError(f"{path}: cannot load the {pipeline_class}'s text encoders ({first})") from e
    pipe.to(device)
    encode = get_pipeline(pipeline_class).encode
    tokens, pooled, masks = [], [], []
    texts = prompts + [negative]  # the negative prompt is encoded exactly as a positive one
    for i in range(0, len(texts), ENCODE_BATCH):
        t, p, m = encode(pipe, texts[i:i + ENCODE_BATCH], device, max_sequence_length or None)
        tokens.append(t.to(dtype))
        pooled.append((t.new_zeros(t.shape[0], 1) if p is None else p).to(dtype))  # Wan: no pooled vector
        masks.append(torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if m is None else m.bool())
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    length = max(t.shape[1] for t in tokens)  # batches padded to their longest prompt: pad to the longest of all
    tokens = [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in tokens]
    masks = [torch.nn.functional.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
    mask = torch.cat(masks)
    return torch.cat(tokens), torch.cat(pooled), (None if bool(mask.all()) else mask)


def load_pipeline_generator(path: str, **options) -> PipelineGenerator:
    """Load a diffusers pipeline folder as a hasten generator.

    Args:
        path: a folder with ``model_index.json`` of a registered pipeline class (``FluxPipeline``,
            ``StableDiffusion3Pipeline``, ``WanPipeline``, ``QwenImagePipeline``, ``Flux2Pipeline``).
        **options: the fields of :class:`PipelineOptions` (prompts or prompts_file, resolution,
            width, frames, dtype, device, negative_prompt, max_sequence_length).

    Returns:
        A :class:`PipelineGenerator` on ``device``; its conditions are the prompts.

    Raises:
        HastenError: no ``model_index.json``, an unsupported pipeline class, no prompts, CUDA asked for
            where there is none, a resolution the latent grid does not divide.
    """
    import diffusers

    from hasten.config import from_dict
    from hasten.io import read_json

    if not os.path.isdir(path):
        raise HastenError(f"{path}: generator not found; expected a diffusers pipeline folder (with {MODEL_INDEX})")
    if not os.path.isfile(os.path.join(path, MODEL_INDEX)):
        raise HastenError(f"{path}: not a diffusers pipeline folder ({MODEL_INDEX} missing)")
    opts = from_dict(PipelineOptions, options, source="generator_options")
    pipeline_class = _pipeline_class(path)
    spec = PIPELINES[pipeline_class]
    family = get_family(spec.family)
    prompts = opts.read_prompts()
    device = opts.torch_device()
    dtype = opts.torch_dtype(device)
    transformer_config = read_json(os.path.join(path, "transformer", "config.json"))
    vae_config = read_json(os.path.join(path, "vae", "config.json"))
    vae_scale_factor = spec.spatial_scale(vae_config)
    side = vae_scale_factor * spec.token_side(transformer_config)
    width = opts.width or opts.resolution
    for name, value in (("resolution", opts.resolution), ("width", width)):
        if value % side:
            raise HastenError(f"generator_options.{name}={value}: the {pipeline_class} needs a multiple of {side} "
                              f"(VAE scale {vae_scale_factor} x patch {spec.token_side(transformer_config)})")
    latent_size = opts.resolution // vae_scale_factor
    if spec.check is not None:
        spec.check(transformer_config, latent_size)
    extra = {}
    if spec.video:
        temporal = spec.temporal_scale(vae_config)
        frames = opts.frames or 81
        if (frames - 1) % temporal:
            raise HastenError(f"generator_options.frames={frames}: the {pipeline_class} needs 1 + a multiple of "
                              f"{temporal} frames (e.g. 81)")
        extra = {"frames": (frames - 1) // temporal + 1, "pixel_frames": frames}
    if width != opts.resolution:
        extra["image_width"] = width // vae_scale_factor
    tokens, pooled, mask = _encode_prompts(path, pipeline_class, prompts, opts.negative_prompt,
                                           opts.max_sequence_length, device, dtype)
    transformer_cls = getattr(diffusers, family.transformer_class)
    try:
        transformer = transformer_cls.from_pretrained(path, subfolder="transformer", **_dtype_kwarg(dtype))
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HastenError(f"{os.path.join(path, 'transformer')}: cannot load the {transformer_cls.__name__} "
                          f"({first})") from e
    transformer.to(device)
    channels = family.channels(transformer)
    meta = {"family": family.name, "class_names": prompts, "image_size": latent_size, "channels": channels,
            "num_steps": 28, "guidance_scale": spec.default_guidance(transformer_config), "latent_space": True,
            "pipeline": pipeline_class, "resolution": opts.resolution, "vae_scale_factor": vae_scale_factor,
            "negative_prompt": opts.negative_prompt, **extra}
    scheduler_config = read_json(os.path.join(path, "scheduler", "scheduler_config.json"))
    generator = PipelineGenerator(transformer, PromptTable(tokens, pooled, mask).to(device), scheduler_config, meta,
                                  path=path, vae_config=vae_config)
    logger.info("loaded %s %s: %d prompts, %dx%d px -> latents %s, %s on %s", pipeline_class, path, len(prompts),
                opts.resolution, width, tuple(generator.sample_shape), str(dtype).replace("torch.", ""), device)
    return generator

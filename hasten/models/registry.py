"""Where generators come from: the embedded ones shipped in the package, a generator folder, or a
diffusers pipeline folder (FLUX.1-dev, SD3-medium: :mod:`hasten.models.pipeline`).

A generator folder (what ``hasten generator train`` exports) holds::

    hasten_generator.json   family, class names, default steps and guidance, the recipe
    transformer/            diffusers save_pretrained (safetensors)
    class_encoder/          model.safetensors + config.json
    scheduler/              FlowMatchEulerDiscreteScheduler config
    classifier/             (embedded only) the evaluation classifier
"""

from __future__ import annotations

import logging
import os

import torch

from hasten.errors import HastenError

logger = logging.getLogger(__name__)

EMBEDDED_ROOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "embedded")
EMBEDDED = {"shapes": os.path.join(EMBEDDED_ROOT, "shapes", "weights"),
            "clips": os.path.join(EMBEDDED_ROOT, "clips", "weights")}
META = "hasten_generator.json"


def resolve_model_folder(name_or_path: str, embedded: dict[str, str], meta: str, kind: str, recipe: str,
                        not_a_folder: str = "") -> str:
    """``embedded:NAME`` (a key of ``embedded``) or a folder holding ``meta`` -> the folder, with errors
    that name the ``kind`` of model ("generator", "reasoner"), the ``recipe`` that writes one and,
    for a folder without ``meta``, what else it could be (``not_a_folder``)."""
    if name_or_path.startswith("embedded:"):
        name = name_or_path.split(":", 1)[1]
        if name not in embedded:
            raise HastenError(f"unknown embedded {kind} {name_or_path!r}: expected one of "
                              f"{', '.join('embedded:' + k for k in embedded)}")
        path = embedded[name]
        if not os.path.isfile(os.path.join(path, meta)):
            raise HastenError(f"{path}: the embedded {kind}'s files are missing from this "
                              f"installation; reinstall hasten or rebuild it with `{recipe}`")
        return path
    if not os.path.isdir(name_or_path):
        examples = " or ".join("embedded:" + k for k in embedded)
        raise HastenError(f"{name_or_path}: {kind} not found; expected {examples} or a folder "
                          f"written by `{recipe}` (holding {meta})")
    if not os.path.isfile(os.path.join(name_or_path, meta)):
        raise HastenError(f"{name_or_path}: not a {kind} folder ({meta} missing); expected a folder "
                          f"written by `{recipe}`{not_a_folder}")
    return name_or_path


def resolve_generator_path(name_or_path: str) -> str:
    """``embedded:NAME`` or a folder -> the generator folder, with errors that say what is expected."""
    return resolve_model_folder(name_or_path, EMBEDDED, META, "generator", "hasten generator train",
                                " or a diffusers pipeline folder (model_index.json)")


def _check_safetensors(path: str) -> None:
    """Open a safetensors file's header so a corrupted file fails with its name, not deep inside."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise HastenError(f"{path}: weights file not found")
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise HastenError(f"{path}: not a readable safetensors file ({e})") from e


def load_generator(name_or_path: str = "embedded:shapes", **options):
    """Load a frozen generator adapter.

    Args:
        name_or_path: ``"embedded:shapes"``, a generator folder (``hasten generator train``), or a
            diffusers pipeline folder (``model_index.json`` of a FluxPipeline / StableDiffusion3Pipeline,
            e.g. FLUX.1-dev downloaded by the user).
        **options: for a pipeline folder, the fields of
            :class:`~hasten.models.pipeline.PipelineOptions` (``prompts`` or ``prompts_file``,
            ``resolution``, ``dtype``, ``device``, ...); ``device`` and ``dtype`` for a generator folder.

    Returns:
        A :class:`~hasten.models.adapter.DiTGenerator` (a
        :class:`~hasten.models.pipeline.PipelineGenerator` for a pipeline folder).

    Example:
        >>> gen = load_generator("embedded:shapes")  # doctest: +SKIP
        >>> images, stats = gen.sample(["red circle"], seeds=[0])  # doctest: +SKIP
        >>> flux = load_generator("models/FLUX.1-dev", prompts=["a red fox"], device="cuda")  # doctest: +SKIP
    """
    import diffusers

    from hasten.models.adapter import DiTGenerator
    from hasten.models.families import FAMILIES
    from hasten.models.flux_pixel import ClassEncoder
    from hasten.models.pipeline import is_pipeline_folder, load_pipeline_generator
    from hasten.io import read_json

    if not name_or_path.startswith("embedded:") and is_pipeline_folder(name_or_path):
        return load_pipeline_generator(name_or_path, **options)
    placement = {key: options.pop(key) for key in ("device", "dtype") if key in options}
    if options:
        raise HastenError(f"{name_or_path}: generator options {sorted(options)} apply to diffusers pipeline folders "
                          "(with model_index.json) only; a generator folder takes only device and dtype")
    device, dtype = _placement(placement)
    path = resolve_generator_path(name_or_path)
    meta = read_json(os.path.join(path, META))
    for key in ("family", "class_names", "image_size", "num_steps", "guidance_scale"):
        if key not in meta:
            raise HastenError(f"{os.path.join(path, META)}: missing field {key!r}")
    if meta["family"] not in FAMILIES:
        raise HastenError(f"{os.path.join(path, META)}: family {meta['family']!r} is not supported; "
                          f"expected one of {sorted(FAMILIES)}")
    transformer_cls = getattr(diffusers, FAMILIES[meta["family"]].transformer_class)
    transformer_dir = os.path.join(path, "transformer")
    _check_safetensors(os.path.join(transformer_dir, "diffusion_pytorch_model.safetensors"))
    from hasten.models.pipeline import _dtype_kwarg

    try:  # in its dtype through diffusers' own loader (it keeps the modules a family needs in float32)
        transformer = transformer_cls.from_pretrained(transformer_dir, **_dtype_kwarg(dtype))
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HastenError(f"{transformer_dir}: cannot load the {transformer_cls.__name__} ({first})") from e
    encoder = ClassEncoder.from_pretrained(os.path.join(path, "class_encoder"))
    scheduler_config = read_json(os.path.join(path, "scheduler", "scheduler_config.json"))
    if encoder.config.num_classes != len(meta["class_names"]):
        raise HastenError(f"{path}: class_encoder has {encoder.config.num_classes} classes but "
                          f"{META} names {len(meta['class_names'])}")
    logger.info("loaded generator %s on %s in %s", path, device, str(dtype).replace("torch.", ""))
    # the frozen model in its dtype, the class encoder's tokens cast to it per call (DiTGenerator.velocity)
    return DiTGenerator(transformer.to(device), encoder.to(device), scheduler_config, meta, path=path)


def _placement(options: dict) -> tuple:
    """``device`` / ``dtype`` generator options of a generator folder (parsed as a pipeline folder's;
    unset: the CPU and float32)."""
    from hasten.models.pipeline import torch_device, torch_dtype

    device = torch_device(str(options["device"])) if "device" in options else torch.device("cpu")
    dtype = torch_dtype(str(options["dtype"]), device) if "dtype" in options else torch.float32
    return device, dtype


def classifier_path(generator_path: str) -> str:
    """The evaluation classifier shipped beside a generator."""
    path = os.path.join(generator_path, "classifier")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise HastenError(f"{path}: no evaluation classifier here; train one with "
                          "`hasten generator train-classifier --out PATH` and pass --classifier PATH")
    return path


def evaluation_classifier(generator, path: str | None = None):
    """The evaluation classifier of policy eval and compare: ``path``, else the one shipped beside
    the generator; None for a diffusers pipeline folder (latent samples; none ships with one) and
    for an in-memory generator without a folder (a random-weight one)."""
    from hasten.embedded.shapes.classifier import load_classifier

    if path:
        return load_classifier(path)
    if generator.path is None or (generator.latent_space
                                  and not os.path.isdir(os.path.join(generator.path, "classifier"))):
        return None
    return load_classifier(classifier_path(generator.path))

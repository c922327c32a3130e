"""The training-free accelerators that hasten is compared with, run through their own libraries.

Each :class:`Peer` is one accelerator at one setting, applied to a generator's frozen transformer
by the library that ships it, while hasten's reference sampler (``generator.sample(...)``,
full compute per call) drives the denoising loop:

- diffusers' caches (``transformer.enable_cache(config)``): FirstBlockCache, TaylorSeer (attention
  outputs, and its "lite" variant that forecasts the model output), MagCache (with magnitude ratios
  from its own calibration mode, run on this model), Pyramid Attention Broadcast, FasterCache
  (attention reuse) and SeaCache. Every transformer call is wrapped in
  ``transformer.cache_context("cond", step_index=..., sigma=..., ...)``, as diffusers' pipelines do,
  and ``_reset_stateful_cache()`` starts every independent sampling run afresh.
- cache-dit's DBCache (``cache_dit.enable_cache(transformer, cache_config=DBCacheConfig(...))``, on
  the bare ``FluxTransformer2DModel`` through its registered ``BlockAdapter``), optionally with its
  TaylorSeer calibrator; ``cache_dit.refresh_context`` before every run.

Classifier-free guidance: hasten's sampler sends both branches through the transformer in one
batch of [cond, uncond] rows, so a library cache decides once per call for the whole batch (and
both branches), as it does inside a diffusers pipeline with batched CFG.

Leaving :meth:`Peer.applied` removes the library's hooks with its own API and then restores every
module attribute the library left behind, so the next method sees the transformer exactly as it
was (same forwards, same attributes, same outputs).

Example:
    >>> gen = hasten.load_generator("embedded:shapes")  # doctest: +SKIP
    >>> peer = default_peers(28)["FirstBlockCache"][1]  # doctest: +SKIP
    >>> with peer.applied(gen):  # doctest: +SKIP
    ...     images = peer.sample(gen, [0, 1], [0, 1])
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

import torch

from hasten.errors import HastenError

logger = logging.getLogger(__name__)

#: diffusers caches that do not apply to these models, and why (reported, not run).
NOT_APPLICABLE = {
    "TextKVCache (diffusers)": "caches text K/V of NucleusMoEImageTransformerBlock only; no block of a Flux "
                               "or SD3 transformer is hooked (no compute saved)",
    "LayerSkip (diffusers)": "a guidance technique (skip-layer guidance), not an accelerator",
    "FasterCache CFG-Cache (diffusers)": "its unconditional-branch reuse assumes [uncond, cond] batches and "
                                         "image-shaped outputs; hasten's sampler batches [cond, uncond] packed "
                                         "tokens, so FasterCache runs with its attention reuse only",
}


def library_version(name: str) -> str | None:
    """Installed version of a distribution (``"diffusers"``, ``"cache-dit"``), None when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------- the loop state
class _LoopState:
    """A forward pre/post hook pair on the transformer: counts calls since the last reset and, for
    diffusers caches, wraps every call in ``transformer.cache_context(...)`` with the schedule
    position, as a diffusers pipeline's loop does."""

    def __init__(self, transformer, family, num_steps: int, diffusers_context: bool):
        self.transformer, self.family, self.num_steps = transformer, family, num_steps
        self.diffusers_context = diffusers_context
        self.step = 0
        self.sigma = 1.0
        self._open: list = []
        self._handles = [transformer.register_forward_pre_hook(self._before, with_kwargs=True),
                         transformer.register_forward_hook(self._after, always_call=True)]

    def _before(self, module, args, kwargs):
        timestep = kwargs.get("timestep")
        if timestep is not None:
            self.sigma = float(timestep.flatten()[0]) / self.family.timestep_per_sigma
        if self.diffusers_context:
            context = module.cache_context("cond", step_index=min(self.step, self.num_steps - 1),
                                           num_inference_steps=self.num_steps, sigma=self.sigma,
                                           timestep=self.sigma * 1000.0)
            context.__enter__()
            self._open.append(context)
        self.step += 1

    def _after(self, module, args, output):
        while self._open:
            self._open.pop().__exit__(None, None, None)

    def current_timestep(self) -> float:
        """The current timestep on diffusers' 0..1000 scale (what ``pipe.current_timestep`` gives)."""
        return self.sigma * 1000.0

    def reset(self) -> None:
        self.step, self.sigma = 0, 1.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class _Snapshot:
    """The instance attributes of every module (and attention processor) of a transformer, and the
    order of its submodules, so that whatever a library leaves behind after its own removal (a
    ``forward`` attribute, an empty hook registry, bookkeeping fields) can be undone.

    The order matters: cache-dit swaps block lists in and out with ``unittest.mock.patch.object``,
    which moves ``transformer_blocks`` after ``single_transformer_blocks`` in ``_modules``; diffusers'
    caches then pick their "first" block by ``named_children()`` order, and FirstBlockCache breaks.
    """

    _ORDERED = ("_modules", "_parameters", "_buffers")

    def __init__(self, transformer):
        self.saved = []
        for module in transformer.modules():
            self.saved.append((module, dict(module.__dict__),
                               {name: list(getattr(module, name).items()) for name in self._ORDERED}))
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "__dict__"):
                self.saved.append((processor, dict(processor.__dict__), {}))

    def restore(self) -> None:
        for obj, saved, ordered in self.saved:
            current = obj.__dict__
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
            for name, items in ordered.items():
                mapping = current[name]
                if list(mapping.items()) != items:
                    mapping.clear()
                    mapping.update(items)


_MISSING = object()


# ----------------------------------------------------------------------------------- peers
@dataclass
class Peer:
    """One training-free accelerator at one setting.

    Attributes:
        family: the method's name, e.g. ``"FirstBlockCache"``.
        library: the distribution that implements it (``"diffusers"``, ``"cache-dit"``).
        setting: a short label of the setting, e.g. ``"threshold=0.1"``.
        kind: ``"diffusers"`` (``transformer.enable_cache``) or ``"cache-dit"``.
        make_config: ``(loop, generator) -> config``, the library's config object for this setting.
        options: the setting as a dict (written to the JSON).
    """

    family: str
    library: str
    setting: str
    kind: str
    make_config: Callable = field(repr=False)
    options: dict = field(default_factory=dict)
    _loop: _LoopState | None = field(default=None, repr=False)

    @property
    def version(self) -> str | None:
        return library_version(self.library)

    @property
    def name(self) -> str:
        return f"{self.family} ({self.setting})"

    def unsupported(self, generator) -> str | None:
        """Why this accelerator cannot attach to ``generator.transformer`` (None when it can)."""
        if self.kind == "diffusers" and not hasattr(generator.transformer, "enable_cache"):
            return (f"{type(generator.transformer).__name__} has no enable_cache in diffusers "
                    f"{library_version('diffusers')} (not a CacheMixin model)")
        return None

    @contextlib.contextmanager
    def applied(self, generator, num_steps: int | None = None):
        """Attach the accelerator to ``generator.transformer`` inside the context; exactly as before after."""
        num_steps = num_steps or generator.default_steps
        transformer = generator.transformer
        generator.detach_knobs()  # hasten's own hooks off: the library sees the plain transformer
        snapshot = _Snapshot(transformer)
        self._loop = _LoopState(transformer, generator.family, num_steps, diffusers_context=self.kind == "diffusers")
        try:
            with _quiet_libraries():
                config = self.make_config(self._loop, generator)
                if self.kind == "diffusers":
                    transformer.enable_cache(config)
                else:
                    cache_dit = _import_cache_dit()
                    cache_config, calibrator = config
                    cache_dit.enable_cache(_cache_dit_target(cache_dit, transformer), cache_config=cache_config,
                                           calibrator_config=calibrator)
            self._num_steps = num_steps
            yield self
        finally:
            try:
                with _quiet_libraries():
                    if self.kind == "diffusers":
                        if getattr(transformer, "_cache_config", None) is not None:
                            transformer.disable_cache()
                    else:
                        _import_cache_dit().disable_cache(transformer)
            finally:
                self._loop.remove()
                self._loop = None
                snapshot.restore()

    def reset(self) -> None:
        """Forget everything cached: the next call starts an independent sampling run."""
        if self._loop is None:
            raise HastenError(f"{self.name}: not applied; use `with peer.applied(generator):`")
        self._loop.reset()
        transformer = self._loop.transformer
        with _quiet_libraries():
            if self.kind == "diffusers":
                transformer._reset_stateful_cache()
            else:
                _import_cache_dit().refresh_context(transformer, num_inference_steps=self._num_steps)

    def sample(self, generator, conditions: Sequence, seeds: Sequence[int], batch_size: int = 1,
               num_steps: int | None = None) -> torch.Tensor:
        """Images of ``(conditions, seeds)`` with the accelerator applied (inside :meth:`applied`),
        ``batch_size`` rows per sampling run, the cache state reset before each run."""
        images = []
        for i in range(0, len(seeds), batch_size):
            self.reset()
            out, _ = generator.sample(list(conditions[i:i + batch_size]), list(seeds[i:i + batch_size]),
                                      num_steps=num_steps or self._num_steps, batch_size=batch_size)
            images.append(out)
        return torch.cat(images)


def _cache_dit_target(cache_dit, transformer):
    """What ``cache_dit.enable_cache`` takes: the transformer itself where cache-dit registers its
    class (Flux), else a ``BlockAdapter`` over its joint blocks, as cache-dit's own adapter for
    SD3 pipelines builds (cache-dit registers SD3 by its pipeline, not its transformer)."""
    if cache_dit.BlockAdapterRegister.is_supported(transformer):
        return transformer
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise HastenError(f"cache-dit: {type(transformer).__name__} is not registered by cache-dit and has no "
                          "transformer_blocks to adapt")
    return cache_dit.BlockAdapter(transformer=transformer, blocks=blocks,
                                  forward_pattern=cache_dit.ForwardPattern.Pattern_1, check_forward_pattern=True)


def _import_cache_dit():
    try:
        import cache_dit
    except ImportError as e:
        raise HastenError("cache-dit is not installed: pip install 'hasten[compare]' (or pip install cache-dit)") from e
    return cache_dit


@contextlib.contextmanager
def _quiet_libraries():
    """cache-dit logs every context it builds at INFO on its own (non-propagating) handlers, and
    diffusers' hooks log their set-up (FasterCache warns that it is experimental at every
    application); keep the benchmark's output readable. Nothing is lost: a cache that silently did
    nothing shows as a FLOPs speedup of 1.00x."""
    with contextlib.suppress(ImportError):
        import cache_dit  # noqa: F401  (its loggers exist once it is imported)
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(("cache_dit", "diffusers.hooks"))]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------------- MagCache calibration
_MAG_RATIOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def calibrate_mag_cache(generator, conditions: Sequence, seeds: Sequence[int], num_steps: int) -> list[float]:
    """MagCache's magnitude ratios for this model, from diffusers' own calibration mode
    (``MagCacheConfig(calibrate=True)``: one full-compute run that logs the ratios), run on
    ``(conditions, seeds)`` as one batch. Memoised per transformer and calibration set."""
    from diffusers.hooks import MagCacheConfig

    key = (num_steps, tuple(int(s) for s in seeds), tuple(str(c) for c in conditions))
    cache = _MAG_RATIOS.setdefault(generator.transformer, {})
    if key in cache:
        return cache[key]
    records: list[str] = []

    class _Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    mag_logger = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level, propagate = _Capture(level=logging.INFO), mag_logger.level, mag_logger.propagate
    mag_logger.addHandler(handler)
    printed = io.StringIO()
    peer = Peer("MagCache calibration", "diffusers", "calibrate", "diffusers",
                lambda loop, gen: MagCacheConfig(calibrate=True, num_inference_steps=num_steps))
    try:
        with peer.applied(generator, num_steps), contextlib.redirect_stdout(printed):
            mag_logger.setLevel(logging.INFO)  # the results are logged at INFO: captured, not shown
            mag_logger.propagate = False
            peer.sample(generator, conditions, seeds, batch_size=len(seeds))
    finally:
        mag_logger.removeHandler(handler)
        mag_logger.setLevel(level)
        mag_logger.propagate = propagate
    found = [r.split(":", 1)[1] for r in records if r.startswith("MagCache Calibration Results")]
    if not found:  # the same list is printed to stdout
        lines = printed.getvalue().strip().splitlines()
        found = [lines[-1]] if lines else []
    try:
        ratios = [float(v) for v in ast.literal_eval(found[-1].strip())]
    except (IndexError, ValueError, SyntaxError) as e:
        raise HastenError("MagCache calibration produced no ratios (diffusers' calibration output changed?)") from e
    if len(ratios) != num_steps:
        raise HastenError(f"MagCache calibration gave {len(ratios)} ratios for {num_steps} steps")
    cache[key] = ratios
    return ratios


# ----------------------------------------------------------------------------------- the settings
def attention_identifiers(generator) -> list[str]:
    """Patterns of the attention modules inside the transformer's blocks (``transformer_blocks.3.attn``,
    Wan's ``blocks.3.attn1`` and ``blocks.3.attn2``), for the caches that hook attention (TaylorSeer,
    FasterCache). diffusers' default patterns (``^blocks.*attn``, matched in full) miss Wan's
    ``attn1`` / ``attn2``, and TaylorSeer and FasterCache then hook nothing on Wan."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    patterns = []
    for block_list in generator.family.block_lists:
        names = sorted({name for block in getattr(generator.transformer, block_list)
                        for name, child in block.named_children() if isinstance(child, (Attention, AttentionModuleMixin))})
        if names:
            patterns.append(rf"^{block_list}\.\d+\.({'|'.join(names)})$")
    return patterns


def _raw_vision(generator):
    """SeaCache's ``raw_vision_callback`` for a hasten generator: the noisy image (or latent) of each
    row as (C, 1, H, W), unpacked from Flux's 2x2-packed tokens where needed; a clip's as (C, F, H, W)."""
    from hasten.models.flux_pixel import unpack

    size = generator.image_size

    def callback(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden is None:
            return None
        if hidden.ndim == 5:  # clips (B, C, F, H, W): SeaCache takes (C, frames, H, W)
            return list(hidden)
        images = hidden if hidden.ndim == 4 else unpack(hidden, size, size)
        return [x.unsqueeze(1) for x in images]

    return callback


def default_peers(num_steps: int, calibration: tuple[Sequence, Sequence[int]] | None = None) -> dict[str, list[Peer]]:
    """The peers and settings of ``hasten compare``: family -> settings (slow to fast).

    Settings span each method's own range, from its recommended value to its most aggressive;
    ``calibration`` = (conditions, seeds) for MagCache's calibration run (training-range seeds).
    """
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, SeaCacheConfig, TaylorSeerCacheConfig)

    calibration = calibration or (list(range(8)), list(range(8)))
    peers: dict[str, list[Peer]] = {}

    def add(family, library, kind, setting, make_config, **options):
        peers.setdefault(family, []).append(Peer(family, library, setting, kind, make_config, options))

    for threshold in (0.1, 0.2, 0.3):
        add("FirstBlockCache", "diffusers", "diffusers", f"threshold={threshold}",
            lambda loop, gen, t=threshold: FirstBlockCacheConfig(threshold=t), threshold=threshold)
    for interval in (2, 3, 5):
        add("TaylorSeer", "diffusers", "diffusers", f"interval={interval}",
            lambda loop, gen, i=interval: TaylorSeerCacheConfig(cache_interval=i, max_order=1,
                                                                taylor_factors_dtype=torch.float32,
                                                                cache_identifiers=attention_identifiers(gen)),
            cache_interval=interval, max_order=1)
    for interval in (2, 3, 5):
        add("TaylorSeer lite", "diffusers", "diffusers", f"interval={interval}",
            lambda loop, gen, i=interval: TaylorSeerCacheConfig(cache_interval=i, max_order=1, use_lite_mode=True,
                                                                taylor_factors_dtype=torch.float32),
            cache_interval=interval, max_order=1, use_lite_mode=True)

    def mag(threshold):
        def make(loop, gen):
            ratios = calibrate_mag_cache(gen, calibration[0], calibration[1], loop.num_steps)
            return MagCacheConfig(threshold=threshold, num_inference_steps=loop.num_steps, mag_ratios=ratios)
        return make

    for threshold in (0.06, 0.12, 0.24):
        add("MagCache", "diffusers", "diffusers", f"threshold={threshold}", mag(threshold), threshold=threshold,
            calibration_seeds=list(calibration[1]))
    for skip in (2, 3, 4):
        add("PyramidAttentionBroadcast", "diffusers", "diffusers", f"skip={skip}",
            lambda loop, gen, k=skip: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=k, spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=loop.current_timestep),
            spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=[100, 800])
    for skip in (2, 3, 4):
        add("FasterCache", "diffusers", "diffusers", f"skip={skip}",
            lambda loop, gen, k=skip: FasterCacheConfig(
                spatial_attention_block_skip_range=k, spatial_attention_timestep_skip_range=(-1, 681),
                spatial_attention_block_identifiers=tuple(attention_identifiers(gen)),
                attention_weight_callback=lambda module: 0.5, is_guidance_distilled=True,
                current_timestep_callback=loop.current_timestep, tensor_format="BCHW"),
            spatial_attention_block_skip_range=skip, attention_only=True)
    for threshold in (0.1, 0.25, 0.5):
        add("SeaCache", "diffusers", "diffusers", f"threshold={threshold}",
            lambda loop, gen, t=threshold: SeaCacheConfig(threshold=t, raw_vision_callback=_raw_vision(gen)),
            threshold=threshold)

    def dbcache(threshold, taylorseer=False, warmup=4):
        def make(loop, gen):
            from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

            config = DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                   max_warmup_steps=warmup, num_inference_steps=loop.num_steps)
            return config, (TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None)
        return make

    for threshold in (0.08, 0.16, 0.32):
        add("DBCache", "cache-dit", "cache-dit", f"F1B0 W4 threshold={threshold}", dbcache(threshold),
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4, residual_diff_threshold=threshold)
    for threshold in (0.16, 0.32, 0.64):
        add("DBCache+TaylorSeer", "cache-dit", "cache-dit", f"F1B0 W4 threshold={threshold}",
            dbcache(threshold, taylorseer=True), Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4,
            residual_diff_threshold=threshold, taylorseer_order=1)
    return peers

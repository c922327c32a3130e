"""``hasten.accelerate``: a trained policy inside a frozen model's own sampling loop.

``with hasten.accelerate(pipe, policy, budget=0.4) as acc:`` plugs a policy into a diffusers
``FluxPipeline``, ``StableDiffusion3Pipeline``, ``WanPipeline``, ``QwenImagePipeline`` or
``Flux2Pipeline`` (or any other pipeline whose transformer the generic family drives, see
:mod:`hasten.models.families`, with a scheduler that takes one model call per step), or into a
hasten generator; inside the context every image
gets its own decisions, and ``acc.stats`` reports what each image spent. Leaving the context leaves
the pipeline exactly as it was: same forwards, no hook left in any diffusers ``HookRegistry``, the
same attention processor objects, the same weights.

How it works on a pipeline. The pipeline owns its denoising loop, so the decisions are applied from
inside the transformer: a diffusers ``ModelHook`` on ``pipe.transformer`` (plus the knob hooks of
:mod:`hasten.knobs` on its blocks) intercepts every transformer call. The schedule
position is the pipeline scheduler's step index; a new pipeline call is recognised by the
scheduler's fresh ``timesteps`` (``set_timesteps`` at the start of every call). At the first call
of each step the hook builds the policy's observation for every image (the same
:class:`~hasten.models.rows.RowState` as hasten's sampler and the training env), asks the
policy for one (step_skip, cache_reuse, sparse_attention) level per image, and runs only the
images that compute, with their cache and sparsity levels, through the transformer.

- Step-Skip inside a pipeline: the pipeline's scheduler still visits every timestep, so an image
  that skips ``k`` intervals (its step_skip level's 0-7) gets, at the next ``k`` steps, its last model output again instead of
  a model call (no compute, FLOPs 0), or, for a policy trained with ``forecast``, that output
  extrapolated to the step's noise level from its last two calls. With the Euler update of
  flow-matching schedulers this is exactly hasten's sampler's jump of ``1 + k`` intervals, so a
  policy acts as it did in training.
- Classifier-free guidance: both branches of an image share its decisions. StableDiffusion3Pipeline
  (and the generic family's pipelines) batch them as [uncond, cond] rows of one call; FluxPipeline's
  true CFG (``true_cfg_scale > 1``), WanPipeline and QwenImagePipeline call the transformer twice per
  step, conditional first (``DiTFamily.cfg_layout``); FLUX.1-dev's and FLUX.2's embedded guidance is
  an input of a single call. Each branch keeps its own residual cache; the policy observes the conditional one.
- ``budget`` is the target FLOPs fraction of full compute the policy is conditioned on; 1.0 asks for
  full compute, so every knob stays at level 0 (the pipeline's own output, and stats that say so).
- FLOPs are analytic (:class:`~hasten.knobs.cost.StepCost`), traced once per input shape with
  one extra batch-1 transformer call; ``flops_fraction`` is relative to every step computing fully.
- Decisions are sampled as in training, from random numbers fixed by ``seed``, the image's entry in
  ``seeds`` (default: its index in the pipeline call) and its call count, so a call is reproducible
  and an image gets the same decisions whatever batch it is in; ``greedy=True`` takes the most likely
  levels instead.

Not supported inside the context (clear errors): SD3's skip-layer guidance, ControlNet residuals,
IP-Adapter images, schedulers that do not track a step index or take more than one model call per
step, Wan 2.2's two-transformer (A14B) pipelines.

On a hasten generator (:class:`~hasten.models.adapter.DiTGenerator`), ``generator.sample(...)``
uses the policy by default inside the context (``decisions=None`` means the policy's; the schedule
length defaults to the policy's) and records its stats in ``acc``.

Example:
    >>> import hasten, torch
    >>> with hasten.accelerate(pipe, policy, budget=0.4) as acc:  # doctest: +SKIP
    ...     images = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=28).images
    >>> acc.stats["flops_fraction"], acc.stats["model_calls"]  # doctest: +SKIP
    (array([0.41, 0.38]), array([17, 15]))
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from diffusers.hooks import ModelHook

from hasten.errors import HastenError
from hasten.models.adapter import DiTGenerator
from hasten.models.rows import RowState
from hasten.knobs.cost import StepCost, time_spent
from hasten.models.families import DiTFamily, family_of
from hasten.knobs import (KNOBS, SPARSE_ATTENTION, KnobState, OutputForecast, RowCache, attach_knobs,
                                     detach_knobs, register_model_hook, remove_model_hook, validate_decisions)
from hasten.policies.heads import Policy

logger = logging.getLogger(__name__)

HOOK_NAME = "hasten_policy"

#: Largest gap between the noise level a transformer call carries and the scheduler's noise level at
#: its step index (bf16 timesteps are off by up to ~0.004).
SIGMA_TOLERANCE = 0.02

_KEEP = torch.tensor(SPARSE_ATTENTION.levels, dtype=torch.float32)


class Acceleration:
    """The handle of ``with hasten.accelerate(...) as acc`` (see :func:`hasten.accelerate`).

    Attributes:
        policy: the policy; budget: the budget it is conditioned on; family: the generator family.
        stats: per-image stats of the latest pipeline call (or ``sample()`` call) in the context, as
            numpy arrays: ``flops_fraction`` (N,) FLOPs relative to full compute at every step,
            ``model_calls`` (N,) guided model evaluations, ``decisions`` (N, num_steps, 3) the applied
            (step_skip, cache_reuse, sparse_attention) levels, -1 where the image made no call, and
            ``time_fraction`` (N,) for a policy whose cost unit is measured time. Empty before the
            first call; live during one.
        history: the stats of every call made in the context, oldest first.
    """

    def __init__(self, target, policy: Policy, budget: float | None = None, *, greedy: bool = False,
                 seed: int = 0, seeds: Sequence[int] | None = None):
        if not isinstance(policy, Policy):
            raise HastenError(f"hasten.accelerate: expected a hasten Policy (Policy.from_pretrained(path)); "
                              f"got {type(policy).__name__}")
        self.policy = policy
        self.budget = policy.config.budget if budget is None else float(budget)
        decide = policy.decide(self.budget, greedy=greedy, seed=seed)  # checks the budget
        if self.budget >= 1.0:  # full compute requested: the policy is not asked
            decide = _full_compute
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        if isinstance(target, DiTGenerator):
            policy.check_compatible(target)
            self._plugin = _GeneratorPlugin(target, self, decide)
        else:
            transformer = getattr(target, "transformer", None)
            scheduler = getattr(target, "scheduler", None)
            if not isinstance(transformer, torch.nn.Module) or scheduler is None:
                raise HastenError(
                    f"hasten.accelerate: expected a diffusers pipeline with a DiT `transformer` and a `scheduler` "
                    f"(FluxPipeline, StableDiffusion3Pipeline) or a hasten generator (hasten.load_generator); "
                    f"got {type(target).__name__}")
            if getattr(target, "transformer_2", None) is not None:
                raise HastenError(f"hasten.accelerate: {type(target).__name__} has a second transformer (transformer_2, "
                                  "Wan 2.2's two-expert A14B models), which hasten does not drive yet; use a "
                                  "single-transformer pipeline (Wan 2.1, Wan 2.2 TI2V-5B)")
            family = family_of(transformer)
            # check_compatible only reads `.family` of what the policy is plugged into
            policy.check_compatible(SimpleNamespace(family=family))
            self._plugin = _PipelinePlugin(target, family, self, decide)
        self.family = self._plugin.family.name
        self._records: list = []
        self._active = False

    # ------------------------------------------------------------------------------ stats
    @property
    def stats(self) -> dict[str, np.ndarray]:
        return self._stats(self._records[-1]) if self._records else {}

    @property
    def history(self) -> list[dict[str, np.ndarray]]:
        return [self._stats(record) for record in self._records]

    def _stats(self, record) -> dict[str, np.ndarray]:
        if isinstance(record, dict):  # a generator's sample() stats
            return record
        rows: RowState = record.rows
        stats = {"flops_fraction": rows.flops_fraction(), "model_calls": rows.model_calls.numpy().copy(),
                 "decisions": rows.decisions.numpy().copy()}
        if self.policy.config.cost_unit == "time":
            stats["time_fraction"] = time_spent(stats["decisions"], self.policy.config.time_table, rows.num_steps)
        return stats

    # ------------------------------------------------------------------------------ context
    def __enter__(self) -> "Acceleration":
        if self._active:
            raise HastenError("hasten.accelerate: this context is already active; leave it before entering again")
        self._plugin.attach()
        self._active = True
        return self

    def __exit__(self, *exc) -> bool:
        self._active = False
        self._plugin.detach()
        return False

    def __repr__(self) -> str:
        return (f"Acceleration(family={self.family!r}, budget={self.budget}, calls={len(self._records)}, "
                f"active={self._active})")


def _full_compute(rows: RowState) -> np.ndarray:
    """Budget 1.0: every knob at level 0 for every row."""
    return np.zeros((rows.batch_size, len(KNOBS)), dtype=np.int64)


# ---------------------------------------------------------------------------------- generators
class _GeneratorPlugin:
    """Inside the context, ``generator.sample(...)`` uses the policy unless given other decisions."""

    def __init__(self, generator: DiTGenerator, acceleration: Acceleration, decide):
        self.generator, self.acceleration, self.decide = generator, acceleration, decide
        self.family = generator.family

    def attach(self) -> None:
        gen = self.generator
        if getattr(gen.__dict__.get("sample"), "_hasten_accelerate", False):
            raise HastenError("hasten.accelerate is already active on this generator; leave that context first")
        self.own_sample = gen.__dict__.get("sample")  # an instance attribute, if someone set one
        self.had_knobs = gen._knobs is not None
        original = gen.sample
        steps = self.acceleration.policy.config.num_steps or None
        forecast = self.acceleration.policy.config.sampler_forecast

        @functools.wraps(original)
        def sample(conditions, seeds, num_steps=None, guidance=None, decisions=None, **kwargs):
            if decisions is None:  # the policy's decisions, with the sampler it was trained with
                decisions = self.decide
                kwargs.setdefault("forecast", forecast)
            images, stats = original(conditions, seeds, num_steps=steps if num_steps is None else num_steps,
                                     guidance=guidance, decisions=decisions, **kwargs)
            self.acceleration._records.append(stats)
            return images, stats

        sample._hasten_accelerate = True
        gen.sample = sample

    def detach(self) -> None:
        gen = self.generator
        if self.own_sample is None:
            gen.__dict__.pop("sample", None)
        else:
            gen.sample = self.own_sample
        if not self.had_knobs:
            gen.detach_knobs()


# ---------------------------------------------------------------------------------- pipelines
class _PolicyHook(ModelHook):
    """The diffusers ``ModelHook`` on a pipeline's transformer: every call goes through the plug-in."""

    def __init__(self, plugin: "_PipelinePlugin"):
        super().__init__()
        self.plugin = plugin

    def new_forward(self, module, *args, **kwargs):
        return self.plugin.forward(self.fn_ref.original_forward, args, kwargs)


@dataclass
class _Step:
    """The decisions of one schedule position, shared by every call (CFG branch) at it."""

    position: int
    due: torch.Tensor  # (N,) images that call the model at this position
    skip: torch.Tensor  # (N,) levels
    cache: torch.Tensor
    sparse: torch.Tensor
    keep: torch.Tensor  # (N,) kept fraction of key blocks
    calls: int = 0  # transformer calls made at this position so far (the branch index)


class _Run:
    """One pipeline call: its images' :class:`RowState`, the current step, the last outputs."""

    def __init__(self, timesteps: torch.Tensor, images: int, doubled: bool, sigmas: torch.Tensor, seeds,
                 forecast: bool = False):
        self.timesteps = timesteps  # the scheduler's tensor (a new one marks the next pipeline call)
        self.images, self.doubled = images, doubled
        self.rows = RowState(images, len(sigmas) - 1, sigmas, cfg=doubled, seeds=seeds, forecast=forecast)
        self.branch_caches: dict[int, RowCache] = {}  # residual caches of sequential branches 1, 2, ...
        self.outputs: dict[int, OutputForecast] = {}  # each branch's last model outputs, by row of the call
        self.step: _Step | None = None

    def cache(self, branch: int) -> RowCache:
        if branch == 0 or self.doubled:
            return self.rows.cache
        return self.branch_caches.setdefault(branch, RowCache(self.images, forecast=self.rows.forecast))

    def branch_outputs(self, branch: int, batch: int) -> OutputForecast:
        if branch not in self.outputs:
            self.outputs[branch] = OutputForecast(batch, first_order=self.rows.forecast is not None,
                                                  space=self.rows.forecast or "velocity")
        return self.outputs[branch]

    def release(self) -> None:
        """Drop what only the running call needs (last outputs, cached residuals); the stats stay."""
        self.outputs.clear()
        self.branch_caches.clear()
        self.rows.cache.residuals.clear()
        self.rows.cache.first_output = None


class _PipelinePlugin:
    """Knob hooks on the pipeline's transformer blocks and the policy hook on the transformer."""

    def __init__(self, pipe, family: DiTFamily, acceleration: Acceleration, decide):
        self.pipe, self.family, self.acceleration, self.decide = pipe, family, acceleration, decide
        self.layout = family.cfg_layout  # how the family's pipelines lay out classifier-free guidance
        self.run: _Run | None = None
        self.costs: dict[tuple, StepCost] = {}

    def attach(self) -> None:
        transformer = self.pipe.transformer
        registry = getattr(transformer, "_diffusers_hook", None)
        if getattr(transformer, "_hasten_knobs", None) is not None or (registry is not None
                                                                       and HOOK_NAME in registry.hooks):
            raise HastenError("hasten.accelerate is already active on this pipeline's transformer (or hasten's "
                              "knobs are attached to it); leave that context first")
        self.transformer = transformer
        self.state: KnobState = attach_knobs(transformer)
        try:
            self.registration = register_model_hook(transformer, _PolicyHook(self), HOOK_NAME)
        except Exception:
            detach_knobs(transformer)
            raise
        self.run = None
        self.costs.clear()

    def detach(self) -> None:
        remove_model_hook(self.registration)
        detach_knobs(self.transformer)
        if self.run is not None:
            self.run.release()
        self.run = None

    # ------------------------------------------------------------------------------ one transformer call
    def forward(self, original, args, kwargs):
        if args:  # pipelines call by keyword; accept positional calls too
            kwargs = dict(inspect.signature(original).bind(*args, **kwargs).arguments)
        hidden, timestep = kwargs.get("hidden_states"), kwargs.get("timestep")
        if hidden is None or timestep is None:
            raise HastenError("hasten.accelerate: the transformer was called without hidden_states or timestep")
        self._check_arguments(kwargs)
        run, position = self._locate(hidden.shape[0], timestep)
        step = run.step
        if step is None or step.position != position:
            step = run.step = self._decide(run, position)
        branch = step.calls
        step.calls += 1

        n, batch = run.images, hidden.shape[0]
        image = torch.arange(batch) % n  # (batch,) image of each row of the call
        # cache rows: the conditional branch first (rows 0..n-1), as in hasten's sampler
        ids = (torch.arange(batch) + n) % batch if run.doubled else torch.arange(batch)
        computing = step.due[image].nonzero().squeeze(1)
        skipping = step.due[image].logical_not().nonzero().squeeze(1)
        outputs, sigma = run.branch_outputs(branch, batch), run.rows.sigmas[position]
        if skipping.numel() and not bool(outputs.seen[skipping].all()):
            raise HastenError("hasten.accelerate: an image skips a step before its first model call")
        if computing.numel() == 0:
            return self._wrap(outputs.at(skipping, sigma, hidden), kwargs)

        images = image[computing]
        effective = self.state.set_call(run.cache(branch), ids[computing], step.cache[images], step.keep[images],
                                        sigma)
        call = kwargs if computing.numel() == batch else self._rows(kwargs, computing, batch)
        try:
            output = original(**call)
        finally:
            self.state.clear_call()
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        full = sample
        if skipping.numel():  # the skipping images: their forecast (or last) output
            full = sample.new_empty((batch, *sample.shape[1:]))
            full[computing.to(full.device)] = sample
            full[skipping.to(full.device)] = outputs.at(skipping, sigma, hidden[skipping.to(hidden.device)])
        outputs.update(computing, sigma, sample, hidden[computing.to(hidden.device)])

        if branch == 0:  # book the images' call once, from their conditional rows
            cond = computing >= n if run.doubled else torch.ones_like(computing, dtype=torch.bool)
            rows, levels = images[cond], effective[cond]
            fractions = self._cost(original, kwargs, batch).fractions(levels, step.keep[rows])
            run.rows.record_call(rows, torch.full_like(rows, position), step.skip[rows], levels, step.sparse[rows],
                                 fractions)
        return self._wrap(full.clone(), kwargs)

    def _check_arguments(self, kwargs: dict) -> None:
        if kwargs.get("skip_layers") is not None:
            raise HastenError("hasten.accelerate: skip-layer guidance (skip_guidance_layers) is not supported; "
                              "call the pipeline without it")
        for name, value in kwargs.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                raise HastenError(f"hasten.accelerate: transformer argument {name!r} (ControlNet residuals) is not "
                                  "supported; call the pipeline without a ControlNet")
        if "ip_adapter_image_embeds" in (kwargs.get("joint_attention_kwargs") or {}):
            raise HastenError("hasten.accelerate: IP-Adapter image embeddings are not supported; call the pipeline "
                              "without an IP-Adapter image")

    def _locate(self, batch: int, timestep) -> tuple[_Run, int]:
        """The pipeline call (a new one when the scheduler has new timesteps) and the schedule position."""
        scheduler = self.pipe.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or not hasattr(scheduler, "step_index") or getattr(scheduler, "order", 1) != 1:
            raise HastenError(f"hasten.accelerate: the pipeline's scheduler {type(scheduler).__name__} does not "
                              "track a step index with one model call per step; expected a flow-matching Euler "
                              "scheduler (FlowMatchEulerDiscreteScheduler) with its timesteps set by the pipeline")
        position = scheduler.step_index
        if position is None:
            position = getattr(scheduler, "begin_index", None) or 0
        schedule = timesteps.detach().float().cpu() / scheduler.config.num_train_timesteps
        if not 0 <= position < len(schedule):
            raise HastenError(f"hasten.accelerate: the scheduler is at step {position} of {len(schedule)}; "
                              "the transformer is called outside the pipeline's denoising loop")
        t = torch.as_tensor(timestep).detach().float().flatten().cpu()
        sigma = t / self.family.timestep_per_sigma
        if (sigma - schedule[position]).abs().max() > SIGMA_TOLERANCE:
            raise HastenError(f"hasten.accelerate: the transformer was called at noise level {float(sigma[0]):.4f}, "
                              f"but the pipeline's scheduler is at step {position} (noise level "
                              f"{float(schedule[position]):.4f}); inside the context the transformer may only be "
                              "called by the pipeline's denoising loop")

        doubled = self.layout == "batched" and bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        if doubled and batch % 2:
            raise HastenError(f"hasten.accelerate: a classifier-free-guidance call of {batch} rows; expected "
                              "[unconditional, conditional] halves")
        images = batch // 2 if doubled else batch
        run = self.run
        if (run is None or run.timesteps is not timesteps or run.images != images or run.doubled != doubled
                or (run.step is not None and position < run.step.position)):
            if run is not None:
                run.release()
            run = self.run = self._start(timesteps, schedule, images, doubled)
        return run, position

    def _start(self, timesteps, schedule, images: int, doubled: bool) -> _Run:
        seeds = self.acceleration.seeds
        if seeds is not None and len(seeds) != images:
            raise HastenError(f"hasten.accelerate: seeds has {len(seeds)} entries but the pipeline call has "
                              f"{images} images; pass one seed per image")
        num_steps = len(schedule)
        policy_steps = self.acceleration.policy.config.num_steps
        if policy_steps and policy_steps != num_steps:
            logger.warning("policy trained at %d steps, pipeline runs %d: its step and cost observations are "
                           "fractions of the schedule, so it still applies, but it was not trained for this",
                           policy_steps, num_steps)
        run = _Run(timesteps, images, doubled, torch.cat([schedule, torch.zeros(1)]),
                   np.arange(images) if seeds is None else seeds, self.acceleration.policy.config.sampler_forecast)
        self.acceleration._records.append(run)
        return run

    def _decide(self, run: _Run, position: int) -> _Step:
        """The policy's levels for every image at the first call of a schedule position."""
        rows = run.rows
        due = rows.index <= position  # the others skip this position with their last output
        rows.index[due] = position  # (a loop that starts later, e.g. image-to-image, joins here)
        levels = torch.from_numpy(validate_decisions(self.decide(rows), rows=rows.batch_size))
        skip, cache, sparse = levels.unbind(1)
        return _Step(position, due, skip, cache, sparse, _KEEP[sparse])

    def _rows(self, kwargs: dict, rows: torch.Tensor, batch: int) -> dict:
        """The call's arguments restricted to ``rows`` (only the per-row inputs of the family: tensors
        with one row per sample, and lists with one entry per sample such as Qwen-Image's ``img_shapes``)."""
        sub = dict(kwargs)
        for name in self.family.row_inputs:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
                sub[name] = value[rows.to(value.device)]
            elif isinstance(value, list) and len(value) == batch:
                sub[name] = [value[i] for i in rows.tolist()]
        return sub

    def _cost(self, original, kwargs: dict, batch: int) -> StepCost:
        """Analytic FLOPs of one row of this call, traced once per input shape."""
        hidden, text = kwargs["hidden_states"], kwargs.get("encoder_hidden_states")
        text_len = 0 if text is None else text.shape[1]
        key = (tuple(hidden.shape[1:]), text_len)
        if key not in self.costs:
            one = self._rows(kwargs, torch.zeros(1, dtype=torch.long), batch)
            self.costs[key] = StepCost.trace_call(self.transformer, lambda: original(**one), text_len)
        return self.costs[key]

    @staticmethod
    def _wrap(sample: torch.Tensor, kwargs: dict):
        """The transformer's return value around ``sample`` (a tuple with ``return_dict=False``)."""
        if not kwargs.get("return_dict", True):
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)

"""``hasten sample``: a PNG grid of samples (an animated GIF grid of clips for a video generator and an
``--out`` ending in ``.gif``), with --policy full compute and the policy side by side."""

from __future__ import annotations

from hasten.cli.common import policy_and_generator, positive_int, set_threads
from hasten.cli.outputs import add_output
from hasten.errors import HastenError


def cmd_sample(args) -> int:
    from hasten.images import save_grid

    set_threads(args.threads)
    policy, generator = policy_and_generator(args)
    if args.classes.strip().lower() == "all":
        classes = list(range(generator.num_classes))
    else:
        classes = [generator.class_index(c) for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise HastenError("--classes: expected class names or indices separated by commas, or 'all'")
    conditions = [c for c in classes for _ in range(args.n)]
    seeds = [args.seed + j for _ in classes for j in range(args.n)]
    if policy is not None:
        return _sample_with_policy(args, generator, policy, classes, conditions, seeds)
    images, stats = generator.sample(conditions, seeds, num_steps=args.steps, guidance=args.guidance,
                                     batch_size=args.batch_size, progress=not args.quiet)
    labels = [generator.class_names[c] for c in classes]
    save_grid(generator.preview(images), rows=len(classes), path=args.out, row_labels=labels, scale=args.scale)
    print(f"wrote {args.out}: {len(classes)} classes x {args.n} samples, "
          f"{stats['seconds'] / len(seeds):.3f} s / sample")
    return 0


def _sample_with_policy(args, generator, policy, classes, conditions, seeds) -> int:
    """Full compute and the policy's samples of the same (class, noise), one row above the other."""
    import torch

    from hasten.images import save_grid
    from hasten.metrics import psnr

    steps = args.steps or policy.config.num_steps or None
    decide = policy.decide(args.budget)  # checks the budget before any sampling
    full, full_stats = generator.sample(conditions, seeds, num_steps=steps, guidance=args.guidance,
                                        batch_size=args.batch_size, progress=not args.quiet)
    fast, stats = generator.sample(conditions, seeds, num_steps=steps, guidance=args.guidance,
                                   decisions=decide, batch_size=args.batch_size,
                                   forecast=policy.config.sampler_forecast,
                                   progress=not args.quiet)
    n = args.n
    rows, labels = [], []
    for i, c in enumerate(classes):
        rows += [full[i * n:(i + 1) * n], fast[i * n:(i + 1) * n]]
        row_flops = stats["flops_fraction"][i * n:(i + 1) * n].mean()
        labels += [f"{generator.class_names[c]}: full", f"policy {1 / row_flops:.1f}x"]
    save_grid(generator.preview(torch.cat(rows)), rows=2 * len(classes), path=args.out, row_labels=labels,
              scale=args.scale)
    value = psnr(fast, full).clamp(max=100).mean()
    print(f"wrote {args.out}: {len(classes)} classes x {args.n} samples, full compute (upper row) vs policy "
          f"(lower row): {1 / stats['flops_fraction'].mean():.2f}x fewer FLOPs, PSNR to full {value:.2f} dB, "
          f"{full_stats['seconds'] / stats['seconds']:.2f}x wall-clock")
    return 0


def add_parser(sub) -> None:
    sample = sub.add_parser(
        "sample", help="write a PNG grid of samples from a generator",
        description="Sample a grid from a generator: one row per class, --n samples per row "
                    "(seeds --seed, --seed+1, ...).")
    sample.add_argument("--generator", help="embedded:NAME or a generator folder (default: the policy's generator "
                                            "with --policy, else embedded:shapes)")
    sample.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                        help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                             "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    sample.add_argument("--classes", default="all",
                        help="comma-separated class names or indices, or 'all' (default: %(default)s)")
    sample.add_argument("--n", type=positive_int, default=8, help="samples per class (default: %(default)s)")
    sample.add_argument("--steps", type=positive_int, help="sampling steps (default: the generator's)")
    sample.add_argument("--guidance", type=float, help="guidance scale (default: the generator's)")
    sample.add_argument("--seed", type=int, default=0, help="first noise seed (default: %(default)s)")
    sample.add_argument("--batch-size", type=positive_int, default=64, help="rows per model call")
    sample.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the grid")
    sample.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    add_output(sample, "--out", default="samples.png",
               help="output PNG (default: %(default)s); for a video generator (embedded:clips) a path ending in "
                    ".gif writes an animated GIF grid, a .png a film strip of each clip's frames")
    sample.add_argument("--policy", help="a policy folder (runs/NAME/policy) or shipped name (embedded:shapes-budgets): "
                                         "full compute and the policy's samples of the same noise, one row above "
                                         "the other")
    sample.add_argument("--budget", type=float, help="target FLOPs fraction for the policy (default: its own)")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(func=cmd_sample)

"""``hasten knobs bench`` (the cost of every knob level), ``hasten rollouts bench`` (rollout pool
throughput) and ``hasten bench gpu`` (the knobs, a policy and the caches at real sizes on a GPU)."""

from __future__ import annotations

import sys

from hasten.cli.common import add_report_options, command_group, int_list, positive_int, report, set_threads


def cmd_knobs_bench(args) -> int:
    from hasten.bench.knobs import bench_knobs, markdown, parse_models

    set_threads(args.threads)
    result = bench_knobs(parse_models(args.models), repeats=args.repeats, samples=args.samples,
                         progress=not args.quiet)
    report(markdown(result), result, args)
    return 0


def cmd_bench_gpu(args) -> int:
    from hasten.bench.gpu import MODELS, bench_gpu, markdown

    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else tuple(MODELS)
    result = bench_gpu(device=args.device, dtype=args.dtype, tiny=args.tiny, models=models, repeats=args.repeats,
                       batches=tuple(args.batches), progress=not args.quiet)
    report(markdown(result), result, args)
    return 0


def cmd_rollouts_bench(args) -> int:
    from hasten.bench.rollouts import bench_rollouts, markdown
    from hasten.trainers.grpo import load_experiment

    config = load_experiment(args.experiment, [*(args.set or []), "logging.progress=false"])
    config.rollouts.threads = args.threads or 1
    result = bench_rollouts(config, list(args.workers), iterations=args.iterations,
                            inprocess_threads=list(args.inprocess_threads),
                            progress=not args.quiet)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    report(markdown(result), result, args)
    return 0


def add_knobs_parser(sub) -> None:
    knobs_sub = command_group(sub, "knobs", "the acceleration knobs: cost benchmark",
                              "The acceleration knobs (step-skip, cache-reuse, sparse attention).")
    bench = knobs_sub.add_parser(
        "bench", help="FLOPs fraction and measured time fraction of every knob level",
        description="For each model and knob level: the analytic FLOPs fraction of a full model call "
                    "and the measured time fraction (median of interleaved repeats); step-skip as "
                    "whole trajectories (model calls, time); attention alone, dense vs sparse; and a "
                    "mixed-decision batch against the sum of its rows.")
    bench.add_argument("--models", default="embedded:shapes,flux-random-1024,flux-random-4096",
                       help="comma-separated: embedded:NAME, a generator folder, or a random-weight config "
                            "at real token counts: flux-random-1024, flux-random-4096 (image tokens), "
                            "wan-random-5k, wan-random-20k (video tokens: 13 latent frames of 30x52 / 60x104) "
                            "(default: %(default)s)")
    bench.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per level (default: %(default)s)")
    bench.add_argument("--samples", type=positive_int,
                       help="samples per model call (default: 8 on small models, 2 on the random FLUX "
                            "configs, 1 on the random Wan configs)")
    add_report_options(bench)
    bench.set_defaults(func=cmd_knobs_bench)


def add_rollouts_parser(sub) -> None:
    roll_sub = command_group(sub, "rollouts", "rollout pools: throughput benchmark",
                             "The rollout pools (in-process, Ray actors).")
    rb = roll_sub.add_parser(
        "bench", help="episodes/s of the in-process pool and of 1, 2, ... Ray workers",
        description="Collect the same iterations of an experiment (initial policy, references computed "
                    "once beforehand) with the in-process pool and with Ray pools of several worker counts "
                    "(each worker one CPU and --threads torch threads), one after the other in one run. "
                    "Example: hasten rollouts bench experiments/quickstart.yaml --workers 1,2 --json out.json")
    rb.add_argument("experiment", help="experiment file (YAML), e.g. experiments/quickstart.yaml")
    rb.add_argument("--workers", type=int_list, default=(1, 2), help="Ray worker counts to measure (default: 1,2)")
    rb.add_argument("--inprocess-threads", type=int_list, default=(),
                    help="also measure the in-process pool at these torch thread counts, e.g. 1,2")
    rb.add_argument("--iterations", type=int, default=3, help="timed iterations per pool, after one warm-up "
                                                                  "(default: %(default)s)")
    rb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the experiment")
    add_report_options(rb)
    rb.set_defaults(func=cmd_rollouts_bench)


def add_gpu_parser(sub) -> None:
    bench_sub = command_group(sub, "bench", "benchmarks on an accelerator: gpu",
                              "Benchmarks that need an accelerator (the CPU ones are `hasten knobs bench`, "
                              "`hasten rollouts bench` and `hasten compare`).")
    gpu = bench_sub.add_parser(
        "gpu", help="knob costs, a mixed batch, sparse vs dense attention, policy vs caches, on one GPU",
        description="Random-weight FLUX.1-dev, Wan 2.1 1.3B and Qwen-Image transformers at their real sizes "
                    "(4096 / 32760 / 4096 image tokens), built on the device in half precision, one at a time: "
                    "the measured time of every knob level vs a full call (CUDA-synchronised), a mixed-decision "
                    "batch vs its rows, block-sparse vs dense SDPA attention, and on FLUX.1 whole samples at "
                    "batch 1 and 8 with the shipped embedded:shapes-budgets policy vs FirstBlockCache, TaylorSeer "
                    "and DBCache; peak memory. No download. About 8 minutes on one H100 "
                    "(benchmarks/gpu.sh). `--device cpu --tiny` is the seconds-long dry run of the test suite.")
    gpu.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for the dry run (default: %(default)s)")
    gpu.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (default: %(default)s)")
    gpu.add_argument("--tiny", action="store_true", help="tiny configs of the same families (a dry run)")
    gpu.add_argument("--models", help="comma-separated subset of flux1-dev, wan2.1-1.3b, qwen-image (default: all)")
    gpu.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per measurement (default: 3)")
    gpu.add_argument("--batches", type=int_list, default=(1, 8), help="batch sizes of the whole-sample comparison "
                                                                       "(default: 1,8)")
    add_report_options(gpu)
    gpu.set_defaults(func=cmd_bench_gpu)

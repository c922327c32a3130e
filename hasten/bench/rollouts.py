"""``hasten rollouts bench``: rollout throughput (episodes/s) of the pools, side by side in one run.

For each pool (in-process, then Ray with 1, 2, ... workers of one torch thread each) the same
iterations of an experiment are collected with the experiment's initial policy; the full-compute
references of every training pair are computed once before any timing, so the numbers are the
steady-state rollout cost of training (the references are a one-off cost of a run). One warm-up
iteration per pool is not timed (actor start, first env, first weights).
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import torch


def bench_rollouts(config, workers: list[int], iterations: int = 3, inprocess_threads: list[int] | None = None,
                   progress: bool = True) -> dict:
    """Episodes/s of each pool on the iterations 1..``iterations`` of ``config`` (iteration 0 warms up).

    Args:
        config: an :class:`~hasten.trainers.grpo_config.ExperimentConfig`.
        workers: Ray worker counts to measure (each worker: one CPU, ``config.rollouts.threads`` threads).
        inprocess_threads: torch thread counts of in-process runs to measure beside them.
    """
    import ray

    from hasten.trainers.grpo import GRPOTrainer

    runs = [("inprocess", 0, t) for t in (inprocess_threads or [])] + [("ray", w, config.rollouts.threads)
                                                                         for w in workers]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        references = None
        generator = None
        for backend, num_workers, threads in runs:
            c = copy.deepcopy(config)
            c.rollouts.backend = backend
            c.rollouts.threads = threads
            if backend == "ray":
                c.rollouts.num_workers = num_workers
                if not ray.is_initialized():
                    ray.init(num_cpus=max(os.cpu_count() or 1, max(workers)), include_dashboard=False,
                             configure_logging=False)
            trainer = GRPOTrainer(c, os.path.join(tmp, f"{backend}-{num_workers}-{threads}"), generator=generator)
            generator = trainer.generator
            if references is None:  # every training pair, once, with all cores
                references = trainer.references
                threads_now = torch.get_num_threads()
                torch.set_num_threads(os.cpu_count() or 1)
                references.get(trainer.pairs[:, 0], trainer.pairs[:, 1])
                torch.set_num_threads(threads_now)
            _share_references(trainer, references)
            try:
                times, episodes = [], 0
                for iteration in range(iterations + 1):
                    conditions, seeds, budgets, row_seeds = trainer.iteration_plan(iteration)
                    start = time.perf_counter()
                    batch = trainer.pool.collect(trainer.policy, conditions, seeds, budgets, row_seeds)
                    elapsed = time.perf_counter() - start
                    if iteration > 0:
                        times.append(elapsed)
                        episodes += batch.num_episodes
                    if progress:
                        print(f"  {backend:9s} workers={num_workers} threads={threads} iteration {iteration}: "
                              f"{batch.num_episodes / elapsed:.2f} episodes/s", flush=True)
                stats = trainer.pool.stats()
            finally:
                trainer.pool.close()
            results.append({"backend": backend, "workers": num_workers, "threads": threads,
                            "episodes": episodes, "seconds": float(np.sum(times)),
                            "episodes_per_s": episodes / float(np.sum(times)),
                            "seconds_per_iteration": [float(t) for t in times],
                            "worker_utilisation": stats.get("perf/worker_utilisation")})
    if ray.is_initialized():
        ray.shutdown()
    base = next((r for r in results if r["backend"] == "ray" and r["workers"] == 1), None)
    for r in results:
        r["speedup_vs_1_worker"] = r["episodes_per_s"] / base["episodes_per_s"] if base else None
    return {"generator": config.generator, "episodes_per_iteration": config.grpo.groups_per_iteration
            * config.grpo.group_size, "iterations": iterations, "results": results,
            "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _share_references(trainer, references) -> None:
    """Point a trainer's pool at the already computed references (no pool computes them again)."""
    pool = trainer.pool
    trainer.references = references  # the envs the in-process pool builds later
    if hasattr(pool, "envs"):  # the in-process pool: each of its envs
        for env in pool.envs.values():
            env.references = references
    else:
        pool.references = references


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def markdown(result: dict) -> str:
    lines = [f"Rollout throughput on `{result['generator']}`, {result['episodes_per_iteration']} episodes per "
             f"iteration, {result['iterations']} timed iterations; {result['machine']}; {result['date']}.", "",
             "| pool | workers | torch threads each | episodes/s | s / iteration | worker utilisation | "
             "vs 1 Ray worker |", "|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        util = "" if r["worker_utilisation"] is None else f"{r['worker_utilisation']:.2f}"
        rel = "" if r["speedup_vs_1_worker"] is None else f"{r['speedup_vs_1_worker']:.2f}x"
        workers = r["workers"] if r["backend"] == "ray" else "-"
        lines.append(f"| {r['backend']} | {workers} | {r['threads']} | {r['episodes_per_s']:.2f} | "
                     f"{np.median(r['seconds_per_iteration']):.2f} | {util} | {rel} |")
    return "\n".join(lines) + "\n"

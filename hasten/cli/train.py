"""``hasten train`` (learn a policy with GRPO) and ``hasten report`` (plots of a run)."""

from __future__ import annotations

import os

from hasten.cli.outputs import add_output
from hasten.errors import HastenError


def cmd_train(args) -> int:
    from hasten.trainers.grpo import GRPOTrainer, load_experiment, new_run_dir, resume_config

    if args.resume:
        if args.experiment:
            raise HastenError("give either EXPERIMENT or --resume RUN_DIR, not both")
        config = resume_config(args.resume, args.set)
        run_dir = args.resume
    else:
        if not args.experiment:
            raise HastenError("missing EXPERIMENT: expected an experiment file, e.g. experiments/quickstart.yaml "
                              "(or --resume RUN_DIR)")
        config = load_experiment(args.experiment, args.set)
        run_dir = new_run_dir(args.out, config.name)
    if args.quiet:
        config.logging.progress = False
    trainer = GRPOTrainer(config, run_dir)  # every check on the experiment happens here, before writing
    print(f"run folder: {run_dir}  (tensorboard --logdir {os.path.join(run_dir, 'tb')})")
    policy_dir = trainer.train(resume=bool(args.resume))
    print(f"policy saved to {policy_dir}")
    print(f"next: {trainer.task.next_steps(policy_dir)}")
    return 0


def cmd_report(args) -> int:
    from hasten.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def add_train_parser(sub) -> None:
    tr = sub.add_parser(
        "train", help="learn an acceleration policy with GRPO (the main job)",
        description="Train acceleration-policy heads for a frozen generator with GRPO: rollouts of the "
                    "Denoising env, composite reward (fidelity, cost, discriminator), group-relative "
                    "advantages, clipped updates. Writes runs/NAME/ (TensorBoard events in tb/, "
                    "metrics.jsonl, checkpoint/, policy/). Example: hasten train experiments/quickstart.yaml",
        epilog="Any field of the experiment file can be overridden, e.g. --set grpo.iterations=10 "
               "--set rewards.discriminator.weight=0 --set budget=0.3")
    tr.add_argument("experiment", nargs="?", help="experiment file (YAML), e.g. experiments/quickstart.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field (repeatable; dotted for sections: grpo.lr=0.01)")
    add_output(tr, "--resume", "existing folder", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    add_output(tr, "--out", "folder", default="runs", help="folder of run folders (default: %(default)s)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)


def add_report_parser(sub) -> None:
    rep = sub.add_parser("report", help="PNG plots of a training run (reward, speedup, PSNR, decisions)",
                         description="Plot a run's reward, FLOPs speedup and PSNR curves, its reward terms and "
                                     "the policy's decisions over the schedule into RUN_DIR/report.png.")
    rep.add_argument("run_dir", help="a run folder, e.g. runs/quickstart")
    add_output(rep, "--out", help="PNG path (default: RUN_DIR/report.png)")
    rep.set_defaults(func=cmd_report)

"""``hasten policy eval`` (a trained policy vs full compute and uniform step reduction), ``hasten policy
list`` (the shipped policies) and ``hasten policy export`` (a run's policy with its provenance)."""

from __future__ import annotations

import os
import sys

from hasten.cli.common import add_report_options, command_group, positive_int, report, set_threads
from hasten.cli.outputs import add_output


def cmd_policy_eval(args) -> int:
    """Evaluate a policy on held-out episodes, the way its task does (:meth:`~hasten.tasks.Task.evaluate_policy`)."""
    from hasten.policies import Policy
    from hasten.tasks import task_of_policy

    set_threads(args.threads)
    policy = Policy.from_pretrained(args.policy)
    result, table = task_of_policy(policy.config, where=args.policy).evaluate_policy(policy, args)
    result["policy"] = args.policy if args.policy.startswith("embedded:") else os.path.abspath(args.policy)
    result["command"] = "hasten " + " ".join(sys.argv[1:]) if sys.argv else ""
    report(table, result, args)
    return 0


def cmd_policy_list(args) -> int:
    """The shipped policies, one row each: what they accelerate, how fast, from which recipe and commit."""
    from hasten.policies.shipped import policy_provenance, shipped_policies

    rows = []
    for name, folder in shipped_policies().items():
        info = policy_provenance(folder)
        final = info.get("final", {})
        if "charts/speedup_flops" in final:
            result = f"{final['charts/speedup_flops']:.2f}x FLOPs, {final.get('charts/fidelity_psnr', float('nan')):.1f} dB"
        elif "charts/accuracy" in final:
            result = f"{final.get('charts/token_fraction', float('nan')):.0%} of the chain, accuracy {final['charts/accuracy']:.3f}"
        else:
            result = ""
        rows.append((name, info.get("model", "?"), result, " && ".join(c for c in info.get("commands", []) if c),
                     str(info.get("commit", "unknown"))[:12], str(info.get("train_minutes", "?"))))
    header = ("name", "model", "at its last training iteration", "recipe", "commit", "train min")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    print("\n".join(lines))
    print("use one wherever a policy folder is accepted: hasten sample --policy NAME, hasten.load_policy(NAME)")
    return 0


def cmd_policy_export(args) -> int:
    from hasten.policies.shipped import export_policy

    info = export_policy(args.run_dir, args.out)
    print(f"wrote {args.out} (commit {info['commit']}, {info['iterations']} iterations)")
    return 0


def add_parser(sub) -> None:
    pol_sub = command_group(sub, "policy", "evaluate trained policies", "Evaluate trained acceleration policies.")
    pe = pol_sub.add_parser(
        "eval", help="a policy vs full compute and uniform step reduction on held-out pairs",
        description="On N held-out (class, noise) pairs: FLOPs speedup, wall-clock speedup at batch 1, "
                    "PSNR/SSIM to full compute, class accuracy and Frechet distance (evaluation "
                    "classifier; none for a diffusers pipeline folder, whose latents are compared by PSNR/SSIM "
                    "only) of full compute, the policy, and uniform step reduction at the step "
                    "counts around the policy's FLOPs. The generator and its loader options default to "
                    "those the policy was trained with.")
    pe.add_argument("policy", help="policy folder or shipped name, e.g. runs/quickstart/policy or embedded:arith-cot")
    pe.add_argument("--generator", help="generator (default: the one the policy was trained on)")
    pe.add_argument("--classifier", help="evaluation classifier folder (default: the generator's own)")
    pe.add_argument("--generator-option", action="append", metavar="KEY=VALUE",
                    help="an option of the generator's loader (repeatable), e.g. for a diffusers pipeline folder "
                         "prompts_file=PATH, resolution=512, device=cuda (default: the policy's own)")
    pe.add_argument("--n", type=positive_int, default=256, help="held-out pairs (default: %(default)s)")
    pe.add_argument("--budget", type=float, help="target FLOPs fraction (default: the policy's)")
    pe.add_argument("--seed", type=int, default=1_000_000, help="first held-out noise seed (default: %(default)s)")
    pe.add_argument("--greedy", action="store_true",
                    help="take each knob's most likely level instead of sampling (seeded) as in training")
    pe.add_argument("--batch-size", type=positive_int, default=64, help="rows per model call")
    pe.add_argument("--timing-samples", type=positive_int, default=4, help="samples timed at batch 1")
    pe.add_argument("--timing-repeats", type=positive_int, default=5, help="interleaved timing repeats")
    add_report_options(pe)
    pe.set_defaults(func=cmd_policy_eval)
    pl = pol_sub.add_parser(
        "list", help="the policies shipped with hasten (embedded:NAME)",
        description="The trained policies shipped with hasten, addressable by name wherever a policy folder "
                    "is accepted (--policy embedded:shapes-budgets, hasten.load_policy('embedded:arith-cot')): "
                    "their model, their result at the last training iteration, the command and commit that "
                    "trained them. Each folder's recipe.yaml reproduces it: hasten train recipe.yaml.")
    pl.set_defaults(func=cmd_policy_list)
    px = pol_sub.add_parser(
        "export", help="copy a run's policy with its recipe, commit and final metrics",
        description="Copy RUN_DIR/policy to OUT with hasten_policy.json (model, command, source commit, machine, "
                    "training minutes, the last iteration's metrics) and recipe.yaml (the experiment as the run "
                    "used it). A shipped policy is an export into hasten/embedded/MODEL/policies/NAME.")
    px.add_argument("run_dir", help="a run folder of hasten train, e.g. runs/quickstart")
    add_output(px, "--out", "folder", required=True, help="the policy folder to write")
    px.set_defaults(func=cmd_policy_export)

"""The acceptance checks of ``hasten compare`` on one result (issues 5 and 23).

1. At every fidelity level, the learned policy's speedup (FLOPs, and wall-clock at batch 1) is >= every
   other method's.
2. At the fidelity the best peer reaches at 2x, the policy reaches >= 3x.
3. Video: at 2.5x, the policy's temporal error is no worse than the best peer's at 2.5x.

Example:
    >>> checks = acceptance(json.load(open("benchmarks/compare.json")))  # doctest: +SKIP
"""

from __future__ import annotations

from hasten.policies.evaluate import interpolate


def is_video(result: dict) -> bool:
    """Clips (per-frame PSNR, temporal error) rather than images."""
    return all("temporal_error" in r for r in result["methods"])


def by_family_at(rows: list[dict], metric: str, key: str, speedup: float) -> dict[str, float]:
    """``key`` (PSNR, temporal error) of each method family at ``speedup``: its settings' curve
    interpolated by ``metric``; families whose settings do not span ``speedup`` are left out."""
    out = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        pts = sorted((r[metric], r[key]) for r in rows if r["family"] == family)
        value = interpolate([p[0] for p in pts], [p[1] for p in pts], speedup)
        if value is not None:
            out[family] = value
    return out


def _frontier(points: list[tuple[float, float]], fidelity: float) -> float | None:
    """Best speedup of a curve at a fidelity of at least ``fidelity``: its points with PSNR >= it
    and the linear interpolation between consecutive points (by PSNR) that spans it."""
    points = sorted(points)
    best = [s for q, s in points if q >= fidelity]
    for (q0, s0), (q1, s1) in zip(points, points[1:]):
        if q0 <= fidelity <= q1 and q1 > q0:
            best.append(s0 + (s1 - s0) * (fidelity - q0) / (q1 - q0))
    return max(best) if best else None


TIE = 0.005  # relative difference of two speedups that counts as equal in the acceptance checks


def acceptance(result: dict) -> dict:
    """The checks of issue 5 (and, on clips, issue 23) on one result.

    1. At every fidelity level, the learned policy's speedup (FLOPs, and wall-clock at batch 1) is
       >= every other method's: for each other method's point (PSNR q, speedup s) the policy's
       curve over budgets must reach q with a speedup >= s (points it does not reach fail; a
       speedup within ``TIE`` of s counts as equal, e.g. the random policy matched to its FLOPs).
    2. At the fidelity the best peer reaches at 2x (each curve interpolated at 2x), the policy
       reaches >= 3x.
    3. Clips: :func:`temporal_at` 2.5x.
    """
    rows = result["methods"]
    ours = [r for r in rows if r["kind"] == "policy"]
    others = [r for r in rows if r["kind"] not in ("policy", "full")]
    out = {}
    for metric in ("speedup_flops", "speedup_wall_batch1"):
        if not ours or metric not in ours[0]:
            continue
        curve = [(r["psnr_db"], r[metric]) for r in ours]
        failures = []
        for r in others:
            at = _frontier(curve, r["psnr_db"])
            if at is None or at < r[metric] * (1 - TIE):
                failures.append({"method": r["method"], "psnr_db": r["psnr_db"], "speedup": r[metric],
                                 "policy_speedup_at_that_psnr": at})
        at_2x = by_family_at(others, metric, "psnr_db", 2.0)
        best_family = max(at_2x, key=at_2x.get) if at_2x else None
        best_psnr = at_2x.get(best_family)
        policy_speedup = _frontier(curve, best_psnr) if best_psnr is not None else None
        by_family = {}
        for r in others:
            total, beaten = by_family.get(r["family"], (0, 0))
            by_family[r["family"]] = (total + 1, beaten + (r["method"] not in {f["method"] for f in failures}))
        out[metric] = {
            "dominates_every_point": not failures, "points_checked": len(others), "points_not_dominated": failures,
            "dominated_by_family": {family: {"points": t, "dominated": d} for family, (t, d) in by_family.items()},
            "psnr_at_2x_by_family": at_2x, "best_peer_at_2x": best_family, "best_peer_psnr_at_2x": best_psnr,
            "policy_speedup_at_that_psnr": policy_speedup,
            "policy_3x_at_best_peer_2x_fidelity": policy_speedup is not None and policy_speedup >= 3.0,
        }
        # the other view: at each of the policy's speedups, each method's PSNR (its curve interpolated;
        # methods whose settings do not span that speedup are left out)
        out[metric]["at_policy_speedups"] = [
            {"method": r["method"], "speedup": r[metric], "psnr_db": r["psnr_db"],
             "psnr_of_others_at_that_speedup": by_family_at(others, metric, "psnr_db", r[metric])} for r in ours]
        if is_video(result):
            out[metric]["temporal_error_at_2.5x"] = temporal_at(ours, others, metric, 2.5)
    return out


def temporal_at(ours: list[dict], others: list[dict], metric: str, speedup: float) -> dict:
    """Temporal error (frame-difference error vs full compute) of each method at ``speedup``: each
    method's settings interpolated by speedup (methods whose settings do not span it are left out);
    the best peer is the one with the lowest error there."""
    peers = by_family_at(others, metric, "temporal_error", speedup)
    best = min(peers, key=peers.get) if peers else None
    policy = by_family_at(ours, metric, "temporal_error", speedup).get(ours[0]["family"])
    return {"speedup": speedup, "policy": policy, "by_family": peers, "best_peer": best,
            "best_peer_temporal_error": peers.get(best),
            "policy_no_worse": None if policy is None or best is None else policy <= peers[best] * (1 + TIE)}

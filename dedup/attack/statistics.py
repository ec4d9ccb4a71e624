"""Membership statistics a reviewer accepts: AUC and the true-positive rate at a low false-positive rate (what
the paper reports), averaged over training seeds, with 95 % bootstrap intervals over the images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dedup.attack.diffusion import auc

LOW_FPR = 0.01
BOOTSTRAP_REPLICATES = 1000


def tpr_at_fpr(member_losses: np.ndarray, heldout_losses: np.ndarray, fpr: float = LOW_FPR) -> float:
    """Share of members whose loss is below the loss that only `fpr` of held-out images reach (lower loss
    means member)."""
    threshold = np.quantile(np.asarray(heldout_losses), fpr, method="lower")
    return float((np.asarray(member_losses) < threshold).mean())


MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auc": auc, "tpr_at_1pct_fpr": tpr_at_fpr}


def seed_mean_with_interval(
    members: Sequence[np.ndarray], heldout: Sequence[np.ndarray], measure: str, seed: int = 0
) -> dict:
    """The measure's mean over seeds (members[i], heldout[i]: one seed's losses of the same images, in the same
    order) and its 95 % interval: the images are resampled with replacement, the same draw in every seed, and
    the seeds' mean taken again, BOOTSTRAP_REPLICATES times."""
    score = MEASURES[measure]
    if not members or not len(members[0]) or not len(heldout[0]):
        return {"mean": None, "low": None, "high": None, "seeds": len(members)}
    rng = np.random.default_rng(seed)
    mean = float(np.mean([score(m, h) for m, h in zip(members, heldout)]))
    replicates = np.empty(BOOTSTRAP_REPLICATES)
    for r in range(BOOTSTRAP_REPLICATES):
        pick_members = rng.integers(0, len(members[0]), len(members[0]))
        pick_heldout = rng.integers(0, len(heldout[0]), len(heldout[0]))
        replicates[r] = np.mean([score(m[pick_members], h[pick_heldout]) for m, h in zip(members, heldout)])
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {"mean": round(mean, 4), "low": round(float(low), 4), "high": round(float(high), 4), "seeds": len(members)}

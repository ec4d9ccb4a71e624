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
    order) and its 95 % interval: the seeds and the images are resampled with replacement (the same image draw
    in every seed drawn), and the drawn seeds' mean taken again, BOOTSTRAP_REPLICATES times: the interval
    carries the training seed's variance as well as the images'."""
    score = MEASURES[measure]
    if not members or not len(members[0]) or not len(heldout[0]):
        return {"mean": None, "low": None, "high": None, "seeds": len(members)}
    rng = np.random.default_rng(seed)
    mean = float(np.mean([score(m, h) for m, h in zip(members, heldout)]))
    replicates = np.empty(BOOTSTRAP_REPLICATES)
    for r in range(BOOTSTRAP_REPLICATES):
        seeds = rng.integers(0, len(members), len(members))
        pick_members = rng.integers(0, len(members[0]), len(members[0]))
        pick_heldout = rng.integers(0, len(heldout[0]), len(heldout[0]))
        replicates[r] = np.mean([score(members[s][pick_members], heldout[s][pick_heldout]) for s in seeds])
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {"mean": round(mean, 4), "low": round(float(low), 4), "high": round(float(high), 4), "seeds": len(members)}


def extraction_indicators(extracted_by_seed: Sequence[Sequence[int]], images: np.ndarray) -> np.ndarray:
    """(seeds, images) booleans: whether each seed's model gave back each of `images` (ids every arm is
    scored on, so arms are paired image by image)."""
    position = {int(image): i for i, image in enumerate(images)}
    indicators = np.zeros((len(extracted_by_seed), len(images)), bool)
    for s, extracted in enumerate(extracted_by_seed):
        indicators[s, [position[int(image)] for image in extracted]] = True
    return indicators


def pooled_count_with_interval(indicators: np.ndarray, minus: np.ndarray | None = None, seed: int = 0) -> dict:
    """Images extracted, the mean over seeds, with a 95 % interval from a bootstrap over seeds and images; with
    `minus` (another arm's indicators, the same seeds in the same order), the paired difference: each draw
    takes the same seeds and images for both arms."""
    if not indicators.size:
        return {"mean": None, "low": None, "high": None, "seeds": len(indicators)}
    rng = np.random.default_rng(seed)
    seeds, images = indicators.shape
    difference = indicators.astype(np.int32) - (0 if minus is None else minus.astype(np.int32))
    counts = difference.sum(1).astype(float)
    replicates = np.empty(BOOTSTRAP_REPLICATES)
    for r in range(BOOTSTRAP_REPLICATES):
        pick_seeds, pick_images = rng.integers(0, seeds, seeds), rng.integers(0, images, images)
        replicates[r] = difference[pick_seeds][:, pick_images].sum(1).mean()
    low, high = np.percentile(replicates, [2.5, 97.5])
    return {
        "mean": round(float(counts.mean()), 2),
        "low": round(float(low), 2),
        "high": round(float(high), 2),
        "per_seed": [round(float(c), 2) for c in counts],
        "seeds": seeds,
    }

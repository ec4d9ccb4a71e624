"""Caption diversification for the copies a keep policy keeps (select.diversify_captions).

Somepalli et al. 2023 ("Understanding and Mitigating Copying in Diffusion Models") found that a duplicated
image memorizes less when its copies carry different captions. The group's best sample keeps its caption, and
so does a kept copy whose caption no other kept copy has; a copy that repeats one takes a caption of another
member of its group that no kept copy uses yet, else its own caption with about a quarter of its words
replaced by words its group's other captions have (or, where they have too few, words of the corpus).
Deterministic: the same run gives the same captions.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import numpy as np

MEMBER = "member caption"
WORDS = "words replaced"
REPLACED_SHARE = 0.25


def diversified_captions(
    group_ids: np.ndarray, ranks: np.ndarray, kept: np.ndarray, captions: list[str], keys: list[str]
) -> tuple[list[str | None], list[str | None]]:
    """(new caption, what changed) per row: None for rows that keep theirs (unique, the group's best, dropped,
    or without a caption)."""
    new: list[str | None] = [None] * len(captions)
    change: list[str | None] = [None] * len(captions)
    members: dict[int, list[int]] = defaultdict(list)
    for row in np.argsort(ranks, kind="stable").tolist():
        members[int(group_ids[row])].append(row)
    corpus = _words(captions[:10_000])
    for rows in members.values():
        kept_rows = [row for row in rows if kept[row]]
        if len(kept_rows) < 2:
            continue
        used: set[str] = set()
        repeating = []
        for row in kept_rows:  # first the kept samples whose caption is their own: they keep it
            own = captions[row].strip()
            if own and own in used:
                repeating.append(row)
            used.add(own)
        spare = [c.strip() for c in (captions[row] for row in rows) if c.strip()]
        for row in repeating:
            own = captions[row].strip()
            other = next((caption for caption in spare if caption not in used), None)
            if other is not None:
                new[row], change[row] = other, MEMBER
            else:
                others = sorted(set(_words(spare)) - set(own.split()))
                vocabulary = others if len(others) >= 8 else corpus
                new[row], change[row] = _replace_words(own, vocabulary, keys[row]), WORDS
            used.add(new[row] or own)
    return new, change


def _words(captions: list[str]) -> list[str]:
    return sorted({word for caption in captions for word in caption.split() if word.isalpha()})


def _replace_words(caption: str, vocabulary: list[str], key: str) -> str:
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    words = caption.split()
    if not vocabulary:
        return caption
    count = max(1, round(len(words) * REPLACED_SHARE))
    for position in rng.sample(range(len(words)), min(count, len(words))):
        words[position] = rng.choice(vocabulary)
    return " ".join(words)

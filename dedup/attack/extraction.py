"""Deciding what was extracted.

White box (unconditional or class-conditional models, the paper's CIFAR-10 setting): a generation is an
extraction of its nearest training image when the relative l2 ratio is below alpha.

Black box (generate-and-filter, the Stable Diffusion setting): for one prompt, N generations; connect two
generations closer than delta (tiled l2); a prompt is flagged as memorized when the graph has a clique of at
least k; the flagged generations are then confirmed against the training set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from dedup.attack.distances import pairwise_tiled_l2, relative_ratio


@dataclass
class WhiteBoxResult:
    nearest: np.ndarray  # per generation, the nearest training row
    ratio: np.ndarray
    extracted: np.ndarray  # bool per generation
    unique_extracted: list[int]  # training rows extracted at least once


def white_box(
    generations: np.ndarray, training: np.ndarray, alpha: float = 0.5, neighbours: int = 50
) -> WhiteBoxResult:
    nearest, ratio = relative_ratio(generations, training, neighbours)
    extracted = ratio < alpha
    return WhiteBoxResult(nearest, ratio, extracted, sorted({int(i) for i in nearest[extracted]}))


def largest_clique(generations: np.ndarray, delta: float, grid: int = 4) -> list[int]:
    """The largest set of generations pairwise within `delta` (tiled l2), images (n, H, W, C) in [0, 1]."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(generations)))
    if len(generations) > 1:
        close = np.triu(pairwise_tiled_l2(generations, grid) <= delta, k=1)
        graph.add_edges_from(zip(*(axis.tolist() for axis in np.nonzero(close))))
    if graph.number_of_edges() == 0:
        return [0] if len(generations) else []
    return max(nx.find_cliques(graph), key=len)


def flag_memorized(
    generations_by_prompt: dict[str, np.ndarray], delta: float = 0.15, min_clique: int = 10, grid: int = 4
) -> dict[str, list[int]]:
    """Prompts whose generations hold a clique of at least `min_clique`, with the clique's members."""
    flagged = {}
    for prompt, generations in generations_by_prompt.items():
        clique = largest_clique(generations, delta, grid)
        if len(clique) >= min_clique:
            flagged[prompt] = sorted(clique)
    return flagged


def counts_by_duplicates(extracted_rows: list[int], duplicate_count: np.ndarray) -> dict[int, int]:
    """How many unique training images were extracted, by how many copies of them the training set held."""
    return dict(sorted(Counter(int(duplicate_count[row]) for row in extracted_rows).items()))


@dataclass
class BlackBoxResult:
    flagged: dict[str, list[int]]  # prompt -> its generations in the largest clique (only prompts with >= k)
    nearest: dict[str, list]  # prompt -> per generation, the nearest training image (confirm.Match)
    extracted: dict[str, list]  # prompt -> matches within delta among its flagged clique

    @property
    def extracted_places(self) -> list[tuple[str, int]]:
        """Unique training samples extracted, as (shard, sample_index)."""
        return sorted({(m.shard, m.sample_index) for matches in self.extracted.values() for m in matches})


def generate_and_filter(
    generations_by_prompt: dict[str, np.ndarray],
    nearest_training,
    delta: float = 0.15,
    min_clique: int = 10,
    grid: int = 4,
) -> BlackBoxResult:
    """The paper's black-box attack: flag prompts whose generations form a clique of at least `min_clique`
    within `delta`, then confirm the clique's generations against the training set with
    `nearest_training(generations) -> [Match]` (see `confirm.nearest_training_images`). Every generation is
    matched, flagged or not, so the report can show how close the unflagged ones came."""
    flagged = flag_memorized(generations_by_prompt, delta, min_clique, grid)
    prompts = list(generations_by_prompt)
    matches = nearest_training(np.concatenate([generations_by_prompt[p] for p in prompts])) if prompts else []
    nearest, extracted, start = {}, {}, 0
    for prompt in prompts:
        count = len(generations_by_prompt[prompt])
        nearest[prompt] = [replace(m, generation=m.generation - start) for m in matches[start : start + count]]
        start += count
        clique = set(flagged.get(prompt, ()))
        extracted[prompt] = [m for m in nearest[prompt] if m.generation in clique and m.tiled_l2 <= delta]
    return BlackBoxResult(flagged, nearest, extracted)

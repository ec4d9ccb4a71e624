"""Deciding what was extracted.

White box (unconditional or class-conditional models, the paper's CIFAR-10 setting): a generation is an
extraction of its nearest training image when the relative l2 ratio is below alpha.

Black box (generate-and-filter, the Stable Diffusion setting): for one prompt, N generations; connect two
generations closer than delta (tiled l2); a prompt is flagged as memorized when the graph has a clique of at
least k; the flagged generations are then confirmed against the training set.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import networkx as nx
import numpy as np

from dedup.attack.distances import relative_ratio, tiled_l2


@dataclass
class WhiteBoxResult:
    nearest: np.ndarray  # per generation, the nearest training row
    ratio: np.ndarray
    extracted: np.ndarray  # bool per generation
    unique_extracted: list[int]  # training rows extracted at least once


def white_box(generations: np.ndarray, training: np.ndarray, alpha: float = 0.5, neighbours: int = 50) -> WhiteBoxResult:
    nearest, ratio = relative_ratio(generations, training, neighbours)
    extracted = ratio < alpha
    return WhiteBoxResult(nearest, ratio, extracted, sorted({int(i) for i in nearest[extracted]}))


def largest_clique(generations: np.ndarray, delta: float, grid: int = 4) -> list[int]:
    """The largest set of generations pairwise within `delta` (tiled l2), images (n, H, W, C) in [0, 1]."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(generations)))
    for i in range(len(generations) - 1):
        close = tiled_l2(generations[i][None], generations[i + 1:], grid) <= delta
        graph.add_edges_from((i, i + 1 + int(j)) for j in np.flatnonzero(close))
    if graph.number_of_edges() == 0:
        return [0] if len(generations) else []
    return max(nx.find_cliques(graph), key=len)


def flag_memorized(generations_by_prompt: dict[str, np.ndarray], delta: float = 0.15, min_clique: int = 10, grid: int = 4) -> dict[str, list[int]]:
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

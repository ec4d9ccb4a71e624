"""The attacks of `verify` on one trained model: membership inference, white-box and black-box extraction."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dedup.attack.diffusion import auc, denoising_losses, text_guidance_magnitude
from dedup.attack.diffusion import sample as generate
from dedup.attack.extraction import counts_by_duplicates, generate_and_filter, white_box
from dedup.attack.presets import AttackSettings
from dedup.attack.statistics import tpr_at_fpr
from dedup.attack.training_data import Conditioning, Images, to_display_range


def _auc(members: np.ndarray, others: np.ndarray) -> float | None:
    return round(auc(members, others), 4) if len(members) and len(others) else None


def membership(
    model, data: Images, conditioning: Conditioning, sets: dict, holdout: Images, attack: AttackSettings
) -> dict:
    """Loss-based membership of the duplicated images (one per group: the group's original), by group size,
    and of a sample of unique ones, against held-out images."""
    rng = np.random.default_rng(attack.seed)
    copied = np.flatnonzero((sets["group_size"] >= 2) & (sets["rank"] == 0))
    unique_all = np.flatnonzero(sets["group_size"] == 1)
    unique = np.sort(rng.choice(unique_all, min(attack.unique_sample, len(unique_all)), replace=False))
    loss = lambda images: denoising_losses(model, images.images, conditioning.of(images))  # noqa: E731
    holdout_loss, copied_loss, unique_loss = loss(holdout), loss(data.take(copied)), loss(data.take(unique))
    sizes = sets["group_size"][copied]
    duplicated_loss = copied_loss[sizes >= attack.duplicated_min]
    by_size = {int(size): copied_loss[sizes == size] for size in np.unique(sizes)}
    return {
        "membership_auc_duplicated_vs_heldout": _auc(duplicated_loss, holdout_loss),
        "membership_auc_unique_vs_heldout": _auc(unique_loss, holdout_loss),
        "membership_tpr_at_1pct_fpr_duplicated": _tpr(duplicated_loss, holdout_loss),
        "membership_tpr_at_1pct_fpr_unique": _tpr(unique_loss, holdout_loss),
        "membership_auc_by_group_size": {str(size): _auc(losses, holdout_loss) for size, losses in by_size.items()},
        "images_by_group_size": {str(size): int(len(losses)) for size, losses in by_size.items()},
        "duplicated_images": int(len(duplicated_loss)),
        "unique_images_sampled": int(len(unique)),
        "heldout_images": int(len(holdout_loss)),
        "_losses": {"duplicated": duplicated_loss, "unique": unique_loss, "heldout": holdout_loss, "by_size": by_size},
    }


def _tpr(members: np.ndarray, others: np.ndarray) -> float | None:
    return round(tpr_at_fpr(members, others), 4) if len(members) and len(others) else None


def closest_per_image(order, training_image_of, count: int = 8) -> list[int]:
    """The first `count` generations in `order` whose training images differ (`training_image_of`: one id per
    image, its duplicate group): the figure shows 8 images, not 8 copies of the most memorized one."""
    chosen, seen = [], set()
    for i in order:
        if training_image_of[i] not in seen:
            seen.add(training_image_of[i])
            chosen.append(i)
            if len(chosen) == count:
                break
    return chosen


def white_box_per_group(generations: np.ndarray, training: np.ndarray, rank: np.ndarray, alpha: float, neighbours: int):
    """White-box extraction against one image per duplicate group (rank 0): an image's own copies are not
    the "other training images" the ratio compares with, or an image held 300 times could never count as
    extracted. Returns the result, each generation's nearest training row, and the reference rows."""
    references = np.flatnonzero(rank == 0)
    result = white_box(
        generations.reshape(len(generations), -1), training[references].reshape(len(references), -1), alpha, neighbours
    )
    return result, references[result.nearest], references


def white_box_attack(
    model, data: Images, conditioning: Conditioning, sets: dict, attack: AttackSettings, unseen: Images | None = None
) -> dict:
    """Samples from the model; extracted when the nearest training image is much nearer than the rest. With
    `unseen` (photos the model never trained on), the same rule is applied against them too: every
    "extraction" of an unseen photo is a false one, the rule's false-positive rate at this resolution."""
    rng = np.random.default_rng(attack.seed + 1)
    classes = model.settings.classes
    labels = rng.integers(0, classes, attack.generations) if classes else None
    started = time.perf_counter()
    generations = generate(model, attack.generations, labels, seed=attack.seed + 1)
    sampling_seconds = time.perf_counter() - started
    train_images = to_display_range(data.images)
    result, nearest, references = white_box_per_group(
        generations, train_images, sets["rank"], attack.alpha, attack.neighbours
    )
    extracted_rows = sorted({int(row) for row in nearest[result.extracted]})
    false_extractions = {}
    if unseen is not None and len(unseen.images) > attack.neighbours:
        against_unseen = white_box(
            generations.reshape(len(generations), -1),
            to_display_range(unseen.images).reshape(len(unseen.images), -1),
            attack.alpha,
            attack.neighbours,
        )
        false_extractions = {
            "unseen_reference_images": int(len(unseen.images)),
            "false_extracted_generations": int(against_unseen.extracted.sum()),
            "false_extracted_images": len(set(against_unseen.nearest[against_unseen.extracted].tolist())),
            "lowest_ratios_unseen": [round(float(r), 4) for r in np.sort(against_unseen.ratio)[:10]],
        }
    closest = [
        (generations[i], train_images[nearest[i]], f"ratio {result.ratio[i]:.2f}", bool(result.extracted[i]))
        for i in closest_per_image(np.argsort(result.ratio), nearest)
    ]
    return {
        "attack": "white box: relative l2 ratio",
        "generations": attack.generations,
        "extracted_generations": int(result.extracted.sum()),
        # one name for one count in verify and extract: a group is one image with its copies; the
        # training samples are the group members matched (here the references: one a group)
        "extracted_images": len(extracted_rows),
        "extracted_image_ids": sorted(int(sets["group"][row]) for row in extracted_rows),
        "extracted_groups": len(extracted_rows),
        "extracted_training_samples": len(extracted_rows),
        "extracted_by_duplicate_count": counts_by_duplicates(extracted_rows, sets["group_size"]),
        "lowest_ratios": [round(float(r), 4) for r in np.sort(result.ratio)[:10]],
        "reference_images": int(len(references)),
        **false_extractions,
        "sampling_seconds": round(sampling_seconds, 1),
        "_closest": closest,
        "_generations": generations,
    }


def black_box_attack(
    model,
    data: Images,
    conditioning: Conditioning,
    sets: dict,
    prompts: list,
    controls: list,
    attack: AttackSettings,
    store_dir: Path,
    embedder,
) -> dict:
    """Generate-and-filter on the captions of the largest duplicate groups (and control captions), confirm the
    flagged cliques through the run's embedding store, and score every caption with the Wen et al. detector."""
    from dedup.attack.confirm import nearest_training_images

    captions = [p.caption for p in prompts + controls]
    per_prompt = attack.generations_per_prompt
    started = time.perf_counter()
    tokens = conditioning.tokens(captions)
    generations = generate(
        model,
        len(captions) * per_prompt,
        np.repeat(tokens, per_prompt, axis=0),
        conditioning.empty,
        seed=attack.seed + 1,
    )
    sampling_seconds = time.perf_counter() - started
    by_prompt = {str(i): generations[i * per_prompt : (i + 1) * per_prompt] for i in range(len(captions))}
    position_of = {place: row for row, place in enumerate(sets["rows"])}
    train_images = to_display_range(data.images)

    def from_memory(places, side):
        return train_images[[position_of[place] for place in places]]

    result = generate_and_filter(
        by_prompt,
        lambda images: nearest_training_images(
            images, store_dir, embedder, attack.grid, attack.candidates, from_memory
        ),
        attack.delta,
        attack.min_clique,
        attack.grid,
    )
    extracted_rows = sorted({position_of[place] for place in result.extracted_places})
    extracted_groups = sorted({int(sets["group"][row]) for row in extracted_rows})
    first_row_of_group = {int(sets["group"][row]): row for row in reversed(extracted_rows)}
    assert conditioning.empty is not None  # a caption-conditioned model
    scores = text_guidance_magnitude(model, tokens, conditioning.empty, attack.detector_repeats, attack.detector_steps)
    is_control = np.arange(len(captions)) >= len(prompts)
    matches = [(int(p), m) for p, found in result.nearest.items() for m in found]
    matches.sort(key=lambda item: item[1].tiled_l2)
    closest = [
        (
            by_prompt[str(p)][m.generation],
            train_images[position_of[(m.shard, m.sample_index)]],
            f"l2 {m.tiled_l2:.2f}",
            m in result.extracted[str(p)],
        )
        for p, m in (
            matches[i]
            for i in closest_per_image(
                range(len(matches)), [int(sets["group"][position_of[(m.shard, m.sample_index)]]) for _, m in matches]
            )
        )
    ]
    return {
        "attack": "black box: generate-and-filter, confirmed through the embedding store",
        "prompts": len(prompts),
        "control_prompts": len(controls),
        "generations": int(len(generations)),
        "flagged_prompts": sum(1 for p in result.flagged if not is_control[int(p)]),
        "flagged_control_prompts": sum(1 for p in result.flagged if is_control[int(p)]),
        "extracted_generations": sum(len(found) for found in result.extracted.values()),
        "extracted_images": len(extracted_groups),
        "extracted_image_ids": extracted_groups,
        "extracted_groups": len(extracted_groups),
        "extracted_training_samples": len(extracted_rows),
        "extracted_by_duplicate_count": counts_by_duplicates(
            [first_row_of_group[g] for g in extracted_groups], sets["group_size"]
        ),
        "lowest_tiled_l2": [round(m.tiled_l2, 4) for _, m in matches[:10]],
        "detector_auc_duplicated_vs_unique_prompts": _auc(-scores[~is_control], -scores[is_control]),
        "per_prompt": [
            {
                "caption": caption,
                "copies": (prompts + controls)[i].group_size,
                "largest_clique": len(result.flagged.get(str(i), [])),
                "extracted": len(result.extracted[str(i)]),
                "detector_score": round(float(scores[i]), 4),
            }
            for i, caption in enumerate(captions)
        ],
        "sampling_seconds": round(sampling_seconds, 1),
        "_closest": closest,
        "_generations": generations,
    }

"""verify's trained models and what the attacks measured on them, kept in the run folder under an identity
(settings, training samples, captions): a rerun reuses them, and a training killed midway continues from its
last checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from dedup.attack.diffusion import ModelSettings, train
from dedup.attack.summary import public
from dedup.attack.training_data import Conditioning, Images
from dedup.io.atomic import atomic_open, write_json
from dedup.io.runfolder import RunFolder
from dedup.progress import Reporter


def model_identity(
    settings: ModelSettings, places: list, conditioning: Conditioning, conditions: np.ndarray | None, rows: np.ndarray
) -> str:
    """What a trained model depends on: its settings, its training samples, vocabulary and captions. A saved
    model, checkpoint or measurement with another identity belongs to another training and is not reused."""
    return json.dumps(
        {
            "settings": asdict(settings),
            "places": hashlib.sha256(json.dumps(places).encode()).hexdigest(),
            "vocabulary": conditioning.vocabulary.to_json() if conditioning.vocabulary else None,
            "captions": (  # an arm that rewrote captions trains on other tokens than B
                hashlib.sha256(np.ascontiguousarray(conditions[rows]).tobytes()).hexdigest()
                if conditions is not None and settings.captions
                else None
            ),
        },
        sort_keys=True,
        default=str,
    )


def trained_model(
    folder: RunFolder,
    name: str,
    identity: str,
    data: Images,
    rows: np.ndarray,
    conditions: np.ndarray | None,
    conditioning: Conditioning,
    settings: ModelSettings,
    reporter: Reporter,
    checkpoint_every: int,
):
    """Model `name` trained on `rows`, or the one a previous verify saved for the same identity: a rerun after
    an interruption or a scoring change skips training, and one killed mid-training continues from its last
    checkpoint."""
    import torch

    from dedup.attack.diffusion import Checkpoint, Denoiser, pick_device

    path = folder.verify_model(name)
    length = conditions.shape[1] if conditions is not None and settings.captions else 0
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("identity") == identity:
            reporter.info(f"verify: reusing model {name} from {path} (same settings and training samples)")
            model = Denoiser(settings, conditioning.vocabulary_length, length)
            model.load_state_dict(saved["state"])
            return model.to(pick_device(settings.device)).eval(), json.loads(saved["stats"])
    reporter.info(f"verify: training model {name} on {len(rows)} images ({settings.train_steps} steps)")
    checkpoint = Checkpoint(folder.verify_checkpoint(name), identity, checkpoint_every)
    model, stats = train(
        data.images[rows],
        None if conditions is None else conditions[rows],
        settings,
        log=lambda message: reporter.info(f"  {name} {message}"),
        vocabulary_length=conditioning.vocabulary_length,
        empty_caption=conditioning.empty,
        checkpoint=checkpoint,
    )
    with atomic_open(path, "wb") as handle:
        torch.save({"identity": identity, "state": model.state_dict(), "stats": json.dumps(stats, default=str)}, handle)
    checkpoint.remove()
    return model, stats


def save_measured(folder: RunFolder, name: str, identity: str, measured: dict) -> None:
    """What the attacks measured on model `name`, with the per-image losses and closest pairs the summary and
    figures read; the JSON is written last, so a measurement is reused only when complete."""
    losses, closest = measured["_losses"], measured["_closest"]
    arrays = {f"losses_{key}": losses[key] for key in ("duplicated", "unique", "heldout")}
    arrays.update({f"losses_size_{size}": values for size, values in losses["by_size"].items()})
    if closest:
        arrays["closest_generated"] = np.stack([pair[0] for pair in closest])
        arrays["closest_training"] = np.stack([pair[1] for pair in closest])
    with atomic_open(folder.verify_measured_arrays(name), "wb") as handle:
        np.savez_compressed(handle, **arrays)
    labels = [[pair[2], bool(pair[3])] for pair in closest]
    write_json(folder.verify_measured(name), {"identity": identity, "measured": public(measured), "closest": labels})


def load_measured(folder: RunFolder, name: str, identity: str) -> dict | None:
    """The measurement `save_measured` kept for the same identity, or None."""
    path = folder.verify_measured(name)
    if not path.exists() or not folder.verify_measured_arrays(name).exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("identity") != identity:
        return None
    with np.load(folder.verify_measured_arrays(name)) as arrays:
        losses = {key: arrays[f"losses_{key}"] for key in ("duplicated", "unique", "heldout")}
        losses["by_size"] = {
            int(key.removeprefix("losses_size_")): arrays[key] for key in arrays.files if key.startswith("losses_size_")
        }
        pairs = (
            zip(arrays["closest_generated"], arrays["closest_training"], saved["closest"])
            if saved["closest"]
            else iter(())
        )
        closest = [(generated, training, label, extracted) for generated, training, (label, extracted) in pairs]
    return {**saved["measured"], "_losses": losses, "_closest": closest}

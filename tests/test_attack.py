"""The attack's parts on hand-computed cases, and a tiny `verify` end to end for the mechanics."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CIFAR, FLICKR, run_cli
from PIL import Image

from dedup.attack.diffusion import auc
from dedup.attack.distances import normalized_l2, pairwise_l2, relative_ratio, tiled_l2
from dedup.attack.extraction import counts_by_duplicates, flag_memorized, largest_clique, white_box
from dedup.io.runfolder import RunFolder


def test_normalized_l2_by_hand():
    a = np.zeros((2, 2, 3))
    b = np.zeros((2, 2, 3))
    b[0, 0, 0] = 1.0  # one value differs by 1 among 12: sqrt(1/12)
    assert normalized_l2(a, b) == pytest.approx(np.sqrt(1 / 12))
    assert normalized_l2(a, a) == 0


def test_tiled_l2_takes_the_worst_tile():
    a = np.zeros((4, 4, 1))
    b = np.zeros((4, 4, 1))
    b[0, 0, 0] = 0.8  # only the top-left 2x2 tile differs: sqrt(0.64 / 4) = 0.4
    assert tiled_l2(a, b, grid=2) == pytest.approx(0.4)
    assert normalized_l2(a, b) == pytest.approx(0.2)  # diluted over the whole image


def test_pairwise_tiled_l2_is_tiled_l2_of_every_pair_one_tile_at_a_time():
    from dedup.attack.distances import pairwise_tiled_l2

    rng = np.random.default_rng(2)
    images = rng.random((30, 24, 24, 3))
    images[7] = np.clip(images[2] + 0.01 * rng.standard_normal(images[2].shape), 0, 1)
    expected = np.array([[tiled_l2(a, b, grid=3) for b in images] for a in images])
    assert np.allclose(pairwise_tiled_l2(images, grid=3, chunk=8), expected, atol=1e-9)


def test_confirmation_searches_the_store_in_bounded_chunks():
    from dedup.attack.confirm import top_rows

    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ embeddings.T), axis=1)[:, :5]
    assert (top_rows(embeddings, queries, 5, chunk=97) == expected).all()
    assert (top_rows(embeddings[:3], queries, 5)[:, 3:] == -1).all()


def test_relative_ratio_and_white_box():
    rng = np.random.default_rng(0)
    training = rng.random((60, 12))
    generations = np.stack([training[3] + 0.001, rng.random(12)])
    nearest, ratio = relative_ratio(generations, training, neighbours=50)
    assert nearest[0] == 3 and ratio[0] < 0.05
    assert ratio[1] > 0.5
    result = white_box(generations, training, alpha=0.5)
    assert result.extracted.tolist() == [True, False] and result.unique_extracted == [3]
    assert pairwise_l2(training[:2], training[:2])[0, 0] == pytest.approx(0, abs=1e-3)


def test_clique_filter_flags_only_the_memorized_prompt():
    rng = np.random.default_rng(1)
    base = rng.random((8, 8, 3))
    memorized = np.stack(
        [np.clip(base + 0.01 * rng.standard_normal(base.shape), 0, 1) for _ in range(12)]
        + [rng.random((8, 8, 3)) for _ in range(8)]
    )
    diverse = rng.random((20, 8, 8, 3))
    flagged = flag_memorized({"memorized": memorized, "diverse": diverse}, delta=0.15, min_clique=10, grid=2)
    assert list(flagged) == ["memorized"] and flagged["memorized"] == list(range(12))
    assert len(largest_clique(diverse, 0.15, 2)) < 10


def test_auc_and_counts():
    assert auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert counts_by_duplicates([0, 2, 3], np.array([1, 1, 200, 200])) == {1: 1, 200: 2}


def tiny_cifar_preset(plant: str, extra: str = "", model: str = "") -> str:
    """A verify preset at the smallest size that runs every step: CIFAR-10 at 8 px, 4 training steps."""
    return f"""
[plant]
source = "{CIFAR / "cifar10-train-00002.tar.gz"}"
{plant}
{extra}
[holdout]
shards = "{CIFAR / "cifar10-test-00005.tar.gz"}"
count = 40
[model]
resolution = 8
channels = [8, 16, 16]
train_steps = 4
batch_size = 16
sample_steps = 4
{model}
[attack]
generations = 16
neighbours = 10
duplicated_min = 10
unique_sample = 40
"""


def test_tiny_verify_end_to_end(tmp_path):
    preset = tmp_path / "verify-tiny.toml"
    plant = 'unique = 300\nsources = 3\ncopies = 20\ntransforms = ["exact", "reencode"]\nshard_size = 150'
    preset.write_text(tiny_cifar_preset(plant))
    result = run_cli("verify", tmp_path / "run", "--preset", preset)
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert report["training_images"] == {"A": 360, "B": 300}  # 300 real images, 3 of them with 20 copies
    for model in ("A", "B"):
        assert report[model]["duplicated_images"] == 3
        assert 0 <= report[model]["membership_auc_duplicated_vs_heldout"] <= 1
        assert report[model]["generations"] == 16
    assert (tmp_path / "run" / "verify-counts.png").exists() and (tmp_path / "run" / "verify-pairs.png").exists()
    assert report["A"]["reference_images"] == 300  # one image per group: copies are not each other's neighbours
    assert report["A"]["unseen_reference_images"] == 40  # the rule tried against photos never trained on
    assert 0 <= report["A"]["false_extracted_images"] <= report["A"]["false_extracted_generations"] <= 16
    saved = np.load(report["A"]["generations_file"])["generations"]
    assert saved.shape == (16, 8, 8, 3) and saved.dtype == np.uint8
    assert "membership AUC" in result.stderr + result.stdout
    assert report["complete"] is True


@pytest.mark.slow
def test_a_stopped_verify_keeps_what_it_measured(tmp_path):
    """Stopped while model B trains (here: its first message raises), verify.json holds model A's measures,
    marked incomplete, and model A kept for a rerun to reuse."""
    from dedup.attack.verify import verify_run
    from dedup.progress import Reporter

    preset = tmp_path / "verify-tiny.toml"
    plant = 'unique = 300\nsources = 3\ncopies = 20\ntransforms = ["exact", "reencode"]\nshard_size = 150'
    preset.write_text(tiny_cifar_preset(plant))

    class StopAtModelB(Reporter):
        def info(self, message: str, **fields) -> None:
            if "model B" in message:
                raise KeyboardInterrupt
            super().info(message, **fields)

    with pytest.raises(KeyboardInterrupt):
        verify_run(str(preset), tmp_path / "run", StopAtModelB(quiet=True))
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert report["complete"] is False and list(report["by_seed"]) == ["A"]
    assert 0 <= report["by_seed"]["A"][0]["membership_auc_duplicated_vs_heldout"] <= 1
    assert (tmp_path / "run" / "verify-model-A.pt").exists()


@pytest.mark.slow
def test_verify_arms_and_seeds_measure_the_same_planted_images(tmp_path):
    """Near-duplicate copies that a content hash misses: B-exact keeps them, B (pHash + PDQ) drops them; every
    model is measured on the same planted images, once per seed, with intervals."""
    preset = tmp_path / "verify-arms.toml"
    plant = 'unique = 200\nsources = 3\ncopies = 10\ntransforms = ["reencode", "flip"]\nshard_size = 100'
    arms = (
        '[dedup]\nconfig = "hashes"\narms = { B-exact = "exact", never = "unseen", '
        'size = { config = "random", like = "B" } }'
    )
    preset.write_text(tiny_cifar_preset(plant, arms, model="seeds = [0, 1]"))
    result = run_cli("verify", tmp_path / "run", "--preset", preset)
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    images = report["training_images"]
    assert list(images) == ["A", "B", "B-exact", "never", "size"] and images["A"] == 230
    assert images["never"] == 230 - 3 * (1 + 10)  # no planted source nor copy: duplicated images it never saw
    assert images["size"] == images["B"] and not (tmp_path / "run" / "arms" / "size").exists()
    assert not (tmp_path / "run" / "arms" / "never").exists()
    # no copy is byte-identical to its source; copies made alike (same quality, mirror) are to each other
    assert images["B-exact"] >= 200 + 3 * 2 and images["B"] < images["B-exact"]
    assert images["B"] <= 200 + 3  # pHash and PDQ find the re-encodes and mirror images
    for name in images:
        assert report[name]["duplicated_images"] == 3  # the planted sources, whatever the arm found
        assert 0 <= report[name]["membership_tpr_at_1pct_fpr_duplicated"] <= 1
        assert len(report["by_seed"][name]) == 2
        interval = report["summary"][name]["auc_duplicated_vs_heldout"]
        assert interval["seeds"] == 2 and interval["low"] <= interval["mean"] <= interval["high"]
    assert (tmp_path / "run" / "verify-model-B-exact-seed1.pt").exists()
    assert report["arm_configs"] == {
        "A": "no deduplication",
        "B": "hashes",
        "B-exact": "exact",
        "never": "never saw the duplicated images",
        "size": "as many samples as B keeps, drawn at random",
    }
    assert "B-exact" in result.stderr and "95% CI" in result.stderr
    for name in images:  # pooled over seeds with an interval; paired with B image by image
        pooled = report["summary"][name]["extracted_images"]
        assert pooled["mean"] == np.mean([seed["extracted_images"] for seed in report["by_seed"][name]])
        assert pooled["low"] <= pooled["mean"] <= pooled["high"] and len(pooled["per_seed"]) == 2
    assert set(report["differences"]) >= {"A - B", "B-exact - B", "size - B", "A - size"}
    dose = report["kept_per_duplicated_image"]  # the dose-response's x: each planted photo's samples trained on
    assert dose["A"] == 11 and dose["never"] == 0 and dose["B"] <= dose["B-exact"] <= 11
    assert (tmp_path / "run" / "verify-dose.png").exists()
    assert report["preset_name"] == "arms" and report["code"]["commit"]
    check_tables_render_from(report, tmp_path)
    check_bad_verify_input(preset, tmp_path)


def check_tables_render_from(report: dict, tmp_path) -> None:
    """docs/verify.md's tables come from committed verify.json files: rendered, they carry the JSON's numbers;
    rendered again, nothing changes; a results file of another preset is refused."""
    from dedup.attack.tables import render_document
    from dedup.errors import InputError

    results = tmp_path / "results"
    results.mkdir()
    (results / "arms.json").write_text(json.dumps(report))
    document = tmp_path / "doc.md"
    document.write_text("# verify\n\n<!-- verify-table arms -->\nold\n<!-- /verify-table -->\n\nText stays.\n")
    assert render_document(document, results) == ["arms"]
    text = document.read_text()
    assert "old" not in text and text.endswith("<!-- /verify-table -->\n\nText stays.\n")
    for name in report["training_images"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        auc = report["summary"][name]["auc_duplicated_vs_heldout"]
        assert f"{auc['mean']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" in row
        assert f"| {report['training_images'][name]:,} |" in row
    assert "| A - B |" in text
    assert render_document(document, results, check=True) == []
    copies = tmp_path / "copies.md"
    copies.write_text("<!-- verify-table arms copies -->\n<!-- /verify-table -->\n")
    render_document(copies, results)
    for edit, value in report["copies_by_edit"].items():  # what each arm kept of each edit's copies
        row = next(line for line in copies.read_text().splitlines() if line.startswith(f"| {edit} |"))
        assert row == f"| {edit} | {value['copies']} | " + " | ".join(str(n) for n in value["kept"].values()) + " |"
    cli = run_cli("verify-tables", document, "--results", results, "--check")
    assert "0 table(s)" in cli.stdout
    (results / "other.json").write_text(json.dumps(report))
    document.write_text("<!-- verify-table other -->\n<!-- /verify-table -->\n")
    with pytest.raises(InputError, match="preset 'arms', not 'other'"):
        render_document(document, results)
    assert document.read_text() == "<!-- verify-table other -->\n<!-- /verify-table -->\n"  # nothing written


def check_bad_verify_input(preset, tmp_path) -> None:
    """An arm the preset does not have, or a run folder holding another preset's data: exit 3, nothing
    overwritten."""
    before = (tmp_path / "run" / "verify.json").read_bytes()
    unknown = run_cli("verify", tmp_path / "run", "--preset", preset, "--arms", "A,B-typo", check=False)
    assert unknown.returncode == 3 and "B-typo" in unknown.stderr and "B-exact" in unknown.stderr
    other = run_cli("verify", tmp_path / "run", "--preset", preset, "--set", "plant.seed=5", check=False)
    assert other.returncode == 3 and "use another run folder" in other.stderr
    assert (tmp_path / "run" / "verify.json").read_bytes() == before


TINY = [  # the GPU preset shrunk to a minute on CPU: its resolution and data kept, its sizes and counts cut
    "model.device=cpu",
    "model.channels=[16, 32, 32]",
    "model.train_steps=2",
    "model.batch_size=8",
    "model.sample_steps=2",
    "plant.unique=60",
    "plant.tiers=[[2, 10], [3, 4]]",
    "plant.shard_size=100",
    "holdout.count=20",
    "attack.generations=8",
    "attack.neighbours=10",
    "attack.duplicated_min=4",
    "attack.unique_sample=20",
]


@pytest.mark.slow
def test_the_gpu_preset_runs_at_tiny_size_on_cpu(tmp_path):
    """The full preset sized for one GPU, tried here with `--set`: its planting (near-duplicates a content hash
    misses), its arms and its 32 px model run end to end; the report records the values it ran with."""
    result = run_cli("verify", tmp_path / "run", "--preset", "flickr-near-gpu", *(f"--set={item}" for item in TINY))
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    model = report["settings"]["model"]
    assert (model["device"], model["train_steps"], model["resolution"]) == ("cpu", 2, 32)
    images = report["training_images"]
    assert list(images) == ["A", "B", "B-exact"] and images["A"] == 60 + 2 * 10 + 3 * 4
    assert images["B"] <= images["B-exact"] <= images["A"]
    assert report["A"]["duplicated_images"] == 5 and report["A"]["generations"] == 8
    assert report["complete"] is True and "membership AUC" in result.stderr + result.stdout


@pytest.mark.slow
def test_a_gpu_preset_stops_at_once_where_there_is_no_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("verify", tmp_path / "run", "--preset", "flickr-near-gpu", check=False)
    assert result.returncode == 3
    assert "no CUDA device" in result.stderr and "--set model.device=cpu" in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing planted
    typo = run_cli("verify", tmp_path / "run", "--preset", "flickr-near-gpu", "--set", "plant.uniqe=5", check=False)
    assert typo.returncode == 3 and "[plant] has no uniqe" in typo.stderr
    shard = FLICKR / "flickr8k-224-00008.tar"
    then = run_cli("run", shard, "--run-dir", tmp_path / "dedup", "--verify", "flickr-near-gpu", check=False)
    assert then.returncode == 3 and "no CUDA device" in then.stderr
    assert not (tmp_path / "dedup").exists()  # stopped before the run, not after it


def test_caption_vocabulary_and_empty_caption():
    from dedup.attack.text import BEGIN, PAD, UNKNOWN, CaptionVocabulary

    vocabulary = CaptionVocabulary.build(["A dog runs.", "a dog sleeps", "two cats"], size=3, max_words=4)
    assert vocabulary.vocabulary[:2] == ["a", "dog"]
    tokens = vocabulary.encode(["a dog flies over the moon", ""])
    assert tokens.shape == (2, 5) and tokens[0, 0] == BEGIN
    assert tokens[0, 1:3].tolist() == [vocabulary._ids["a"], vocabulary._ids["dog"]] and tokens[0, 3] == UNKNOWN
    assert tokens[1].tolist() == [BEGIN, PAD, PAD, PAD, PAD] and (vocabulary.empty()[0] == tokens[1]).all()


@pytest.fixture(scope="module")
def flickr_run(tmp_path_factory):
    """300 Flickr8k photos, 3 of them planted 20 times with their captions, through `dedup run` (pixels)."""
    from dedup.runner import run
    from dedup.settings import load_settings
    from dedup.tools.planting import plant

    root = tmp_path_factory.mktemp("flickr-verify")
    planted = plant(
        str(FLICKR / "flickr8k-224-00000.tar"), root / "data", sources=3, copies=20, limit=300, shard_size=150, seed=0
    )
    settings = load_settings("offline")
    settings.shards, settings.run_dir = [str(root / "data")], str(root / "run")
    run(settings)
    return root, planted, settings


def test_store_confirmation_finds_the_training_image_a_generation_copies(flickr_run):
    """A 'generation' that is a training photo (re-encoded, at 16 px) is matched to that photo through the
    run's store; noise matches nothing within delta; the generate-and-filter attack flags and confirms only
    the prompt whose generations copy a training image."""
    from dedup.attack.confirm import images_from_shards, nearest_training_images
    from dedup.attack.extraction import generate_and_filter
    from dedup.embedders import embedder_from

    root, planted, settings = flickr_run
    store = root / "run" / "embeddings"
    embedder = embedder_from(settings.embed)
    source_key = planted.groups[0][0]
    groups = pq.read_table(root / "run" / "groups.parquet").to_pylist()
    place = next((g["shard"], g["sample_index"]) for g in groups if g["key"] == source_key)
    photo = images_from_shards([place], 16)[0]
    rng = np.random.default_rng(0)
    copies = np.clip(photo[None] + 0.01 * rng.standard_normal((12, 16, 16, 3)), 0, 1).astype(np.float32)
    noise = rng.random((12, 16, 16, 3)).astype(np.float32)
    matches = nearest_training_images(np.concatenate([copies[:1], noise[:1]]), store, embedder)
    expected_keys = set(planted.groups[0])  # the photo or any of its planted copies
    assert matches[0].key in expected_keys and matches[0].tiled_l2 < 0.05
    assert matches[1].tiled_l2 > 0.15

    result = generate_and_filter(
        {"memorized": copies, "diverse": noise},
        lambda images: nearest_training_images(images, store, embedder),
        delta=0.15,
        min_clique=10,
    )
    assert list(result.flagged) == ["memorized"] and result.extracted["diverse"] == []
    assert len(result.extracted["memorized"]) == 12
    assert {(m.shard, m.sample_index) for m in result.extracted["memorized"]} <= {
        (g["shard"], g["sample_index"]) for g in groups if g["key"] in expected_keys
    }


def test_confirmation_refuses_another_embedder(flickr_run):
    from dedup.attack.confirm import nearest_training_images
    from dedup.embedders import build_embedder
    from dedup.errors import SettingsError

    root, _, _ = flickr_run
    with pytest.raises(SettingsError, match="embedded with"):
        nearest_training_images(
            np.zeros((1, 16, 16, 3), np.float32), root / "run" / "embeddings", build_embedder("pixels", pixel_size=4)
        )


def test_largest_group_prompts_are_the_planted_captions(flickr_run):
    from dedup.attack.prompts import largest_group_prompts, unique_image_prompts

    root, planted, _ = flickr_run
    prompts = largest_group_prompts(root / "run", 3)
    assert [p.group_size for p in prompts] == [21, 21, 21]
    groups = pq.read_table(root / "run" / "groups.parquet").to_pylist()
    caption_of = {g["key"]: g["caption"] for g in groups}
    assert {p.caption for p in prompts} == {caption_of[group[0]].strip() for group in planted.groups}
    controls = unique_image_prompts(root / "run", 5)
    assert len(controls) == 5 and all(p.group_size == 1 for p in controls)


TINY_CAPTION_PRESET = f"""
[plant]
source = "{FLICKR / "flickr8k-224-00001.tar"}"
unique = 200
sources = 3
copies = 20
shard_size = 100
[holdout]
shards = "{FLICKR / "flickr8k-224-00008.tar"}"
count = 30
[model]
captions = true
resolution = 8
channels = [16, 16]
train_steps = 4
batch_size = 16
sample_steps = 3
[attack]
prompts = 3
control_prompts = 3
generations_per_prompt = 4
min_clique = 2
duplicated_min = 10
unique_sample = 30
detector_repeats = 2
"""


@pytest.mark.slow
def test_tiny_caption_verify_end_to_end(tmp_path):
    """The Flickr8k setting in miniature: caption-conditioned model, black-box attack, Wen detector."""
    preset = tmp_path / "verify-tiny-flickr.toml"
    preset.write_text(TINY_CAPTION_PRESET)
    result = run_cli("verify", tmp_path / "run", "--preset", preset)
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert report["training_images"] == {"A": 260, "B": 200}
    for model in ("A", "B"):
        measured = report[model]
        assert measured["duplicated_images"] == 3 and measured["prompts"] == 3 and measured["control_prompts"] == 3
        assert measured["generations"] == 24
        assert [p["copies"] for p in measured["per_prompt"]] == [21, 21, 21, 1, 1, 1]
        assert 0 <= measured["detector_auc_duplicated_vs_unique_prompts"] <= 1
        assert len(measured["lowest_tiled_l2"]) == 10
    assert "Wen detector AUC" in result.stderr + result.stdout

    # a rerun with another attack setting measures again on both trained models, reused
    again = run_cli("verify", tmp_path / "run", "--preset", preset, "--set", "attack.detector_repeats=3")
    assert "reusing model A" in again.stderr and "reusing model B" in again.stderr
    assert "reusing what was measured" not in again.stderr
    rerun = json.loads((tmp_path / "run" / "verify.json").read_text())
    for model in ("A", "B"):
        assert rerun[model]["training"] == report[model]["training"]
        assert (
            rerun[model]["membership_auc_duplicated_vs_heldout"]
            == report[model]["membership_auc_duplicated_vs_heldout"]
        )


@pytest.mark.slow
def test_caption_arms_keep_k_copies_with_and_without_new_captions(tmp_path):
    """Somepalli et al.'s mitigation as a verify arm: the same 3 copies a group kept, captions as they were
    or diversified; the diversified arm's model trains on the captions its run wrote."""
    arms = (
        '[dedup]\nconfig = "hashes"\narms = { B-cap3 = { config = "hashes", set = ["select.policy=cap:3"] }, '
        'B-cap3-diverse = { config = "hashes", set = ["select.policy=cap:3", "select.diversify_captions=true"] } }\n'
    )
    preset = tmp_path / "verify-tiny-captions.toml"
    preset.write_text(TINY_CAPTION_PRESET + arms)
    run_cli("verify", tmp_path / "run", "--preset", preset)
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    images = report["training_images"]
    assert images["B-cap3"] == images["B-cap3-diverse"] == images["B"] + 3 * 2
    assert report["captions_rewritten"]["B-cap3"] == 0
    assert report["captions_rewritten"]["B-cap3-diverse"] == 3 * 2  # the two copies kept beside each best
    assert report["B-cap3"]["training"]["final_loss"] != report["B-cap3-diverse"]["training"]["final_loss"]
    # the arms embed as the run did: they searched the run's own embeddings, linked, not embedded again
    run_parts = sorted((tmp_path / "run" / "embeddings" / "img_emb").glob("*.npy"))
    for arm in ("B-cap3", "B-cap3-diverse"):
        arm_parts = sorted((RunFolder(tmp_path / "run").arm(arm).embeddings / "img_emb").glob("*.npy"))
        assert [p.name for p in arm_parts] == [p.name for p in run_parts]
        assert all(a.stat().st_ino == r.stat().st_ino for a, r in zip(arm_parts, run_parts))


@pytest.mark.slow
def test_run_with_verify_confirms_through_the_runs_own_store(flickr_run, tmp_path):
    """`dedup run ... --verify PRESET` ends with verify, on the run's data and with the run's embedder."""
    root, _, _ = flickr_run
    preset = tmp_path / "verify-tiny-flickr.toml"
    preset.write_text(TINY_CAPTION_PRESET)
    run_cli(
        "run",
        root / "data",
        "--config",
        "offline",
        "--set",
        "embed.pixel_size=6",
        "--run-dir",
        tmp_path / "run",
        "--verify",
        preset,
    )
    report = json.loads((tmp_path / "run" / "verify.json").read_text())
    assert report["training_images"] == {"A": 360, "B": 300}
    assert report["settings"]["embed"]["pixel_size"] == 6  # the run's, not the preset's offline default (8)
    assert report["A"]["prompts"] == 3


def tiny_stable_diffusion(folder):
    """A Stable Diffusion pipeline of tiny randomly initialised components, saved where a user's would be."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocabulary = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [f"{c}</w>" for c in letters]:
        vocabulary[token] = len(vocabulary)
    (folder / "tokenizer-source").mkdir(parents=True)
    (folder / "tokenizer-source" / "vocab.json").write_text(json.dumps(vocabulary))
    (folder / "tokenizer-source" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "tokenizer-source" / "vocab.json"),
        str(folder / "tokenizer-source" / "merges.txt"),
        model_max_length=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


@pytest.mark.slow
def test_extract_attacks_a_local_text_to_image_pipeline(flickr_run, tmp_path):
    """`dedup extract` loads a diffusers pipeline from a local folder, attacks it with the captions of the largest
    groups and writes extract.json; a pipeline that returns a training photo for one caption gets that photo
    counted as extracted, through the run's store."""
    from dedup.attack.confirm import images_from_shards
    from dedup.attack.text_to_image import ExtractSettings, extract, load_pipeline

    root, planted, settings = flickr_run
    folder = tiny_stable_diffusion(tmp_path)
    result = run_cli(
        "extract",
        "--pipeline",
        folder,
        "--run-dir",
        root / "run",
        "--prompts",
        "3",
        "--generations",
        "2",
        "--steps",
        "2",
        "--min-clique",
        "2",
        "--config",
        "offline",
        "--prefilter",
        "2",
    )
    report = json.loads((root / "run" / "extract.json").read_text())
    assert report["prompts"] == 2 and len(report["per_prompt"]) == 2  # the detector kept 2 of the 3 largest groups
    assert all(p["copies"] == 21 and p["detector_score"] > 0 for p in report["per_prompt"])
    assert report["extracted_images"] == 0  # random weights copy nothing
    assert '"flagged_prompts"' in result.stdout

    groups = pq.read_table(root / "run" / "groups.parquet").to_pylist()
    source = next(g for g in groups if g["key"] == planted.groups[0][0])
    photo = images_from_shards([(source["shard"], source["sample_index"])], 16)[0]
    pipe = load_pipeline(folder, "cpu")

    class MemorizingPipeline:  # the real pipeline, except that one caption brings back a training photo
        def __getattr__(self, name):
            return getattr(pipe, name)

        def __call__(self, caption, num_images_per_prompt, **options):
            if caption == source["caption"].strip():
                return type("Output", (), {"images": np.repeat(photo[None], num_images_per_prompt, 0)})
            return pipe(caption, num_images_per_prompt=num_images_per_prompt, **options)

    report = extract(
        root / "run",
        folder,
        ExtractSettings(prompts=3, generations_per_prompt=3, steps=2, size=16, min_clique=3),
        settings.embed,
        pipe=MemorizingPipeline(),
    )
    extracted = [p for p in report["per_prompt"] if p["extracted"]]
    assert report["flagged_prompts"] >= 1 and report["extracted_groups"] == report["extracted_images"] == 1
    # the photo matched one or more of its 21 copies: samples counted apart from the one image they are
    assert 1 <= report["extracted_training_samples"] <= 21
    assert [p["caption"] for p in extracted] == [source["caption"].strip()]
    assert {e["key"] for e in extracted[0]["extracted"]} <= set(planted.groups[0])
    assert report["figure"] and (root / "run" / "extract-pairs.png").exists()


def test_extract_without_a_run_says_what_to_run_first(tmp_path):
    result = run_cli("extract", "--pipeline", tmp_path / "nowhere", "--run-dir", tmp_path / "run", check=False)
    assert result.returncode == 2 and "run `dedup find` first" in result.stderr


@pytest.mark.slow
def test_extract_without_a_pipeline_folder_says_what_to_do(flickr_run, tmp_path):
    root, _, _ = flickr_run
    result = run_cli(
        "extract", "--pipeline", tmp_path / "nowhere", "--run-dir", root / "run", "--config", "offline", check=False
    )
    assert result.returncode == 3
    assert "model_index.json" in result.stderr and "nothing is downloaded" in result.stderr


def test_heavy_tailed_planting_tiers(tmp_path):
    from dedup.attack.presets import planted_counts
    from dedup.errors import SettingsError
    from dedup.tools.planting import plant

    assert planted_counts({"tiers": [[2, 5], [3, 2]]}, "preset") == (5, [5, 5, 2, 2, 2])
    with pytest.raises(SettingsError, match="not both"):
        planted_counts({"tiers": [[2, 5]], "copies": 3}, "preset")
    with pytest.raises(SettingsError, match="tiers"):
        planted_counts({"copies": [1, 3]}, "preset")
    planted = plant(
        str(CIFAR / "cifar10-train-00001.tar.gz"), tmp_path, sources=5, copies=[5, 5, 2, 2, 2], limit=60, seed=0
    )
    assert [len(group) - 1 for group in planted.groups] == [5, 5, 2, 2, 2]
    assert planted.samples == 60 + 16


def test_near_duplicate_planting_misses_the_content_hash_and_paraphrases_captions(tmp_path):
    import hashlib

    from dedup.io.reader import iter_shard
    from dedup.tools.planting import NEAR_DUPLICATE_EDITS, plant

    planted = plant(
        str(FLICKR / "flickr8k-224-00004.tar"), tmp_path, sources=5, copies=5, transforms=NEAR_DUPLICATE_EDITS,
        limit=40, seed=1, paraphrase=True,
    )  # fmt: skip
    samples = {s.key: s.files for url in planted.shards for s in iter_shard(url, on_fault=lambda fault: None)}
    for group in planted.groups:
        source = samples[group[0]]
        source_digest = hashlib.sha256(source["jpg"]).digest()
        human = json.loads(source["json"])["captions"]
        for key in group[1:]:
            copy = samples[key]
            assert hashlib.sha256(copy["jpg"]).digest() != source_digest
            assert Image.open(io.BytesIO(copy["jpg"])).convert("RGB").size[0] >= 100
            caption = copy["txt"].decode()
            assert caption in human and caption != source["txt"].decode().strip()
            assert json.loads(copy["json"])["caption"] == caption
    assert sorted(set(planted.transforms.values())) == sorted(NEAR_DUPLICATE_EDITS)


def test_out_of_family_planting_one_edit_a_photo_with_other_photos_used_once(tmp_path):
    """The edits the detector never trained on: each source takes one edit for all its copies; composites
    and templates combine it with photos of `others`, never the same one twice, never a copied-in one."""
    from dedup.io.reader import iter_shard
    from dedup.tools.planting import OUT_OF_FAMILY_EDITS, plant

    others = str(FLICKR / "flickr8k-224-00007.tar")
    planted = plant(
        str(FLICKR / "flickr8k-224-00005.tar"), tmp_path, sources=12, copies=3, transforms=OUT_OF_FAMILY_EDITS,
        limit=60, seed=11, one_edit_per_source=True, others=others,
    )  # fmt: skip
    samples = {s.key: s.files for url in planted.shards for s in iter_shard(url, on_fault=lambda fault: None)}
    partner_keys = {s.key for s in iter_shard(others, on_fault=lambda fault: None)}
    assert not partner_keys & set(samples)  # the other photos are pasted, not copied in
    backgrounds = []
    for number, group in enumerate(planted.groups):
        edits = {planted.transforms[key] for key in group[1:]}
        assert edits == {OUT_OF_FAMILY_EDITS[number % len(OUT_OF_FAMILY_EDITS)]}
        source = np.asarray(Image.open(io.BytesIO(samples[group[0]]["jpg"])).convert("RGB"), np.float32)
        for key in group[1:]:
            copy = np.asarray(Image.open(io.BytesIO(samples[key]["jpg"])).convert("RGB"), np.float32)
            if edits == {"composite"}:  # the source shrunk into another photo: its corners are not the source's
                backgrounds.append(copy[:8, :8].mean())
            if copy.shape == source.shape:
                assert np.abs(copy - source).mean() > 3  # every edit changes the photo visibly
    assert len(set(np.round(backgrounds, 1))) == len(backgrounds) == 2 * 3  # each composite on its own photo
    light = plant(str(FLICKR / "flickr8k-224-00005.tar"), tmp_path / "light", sources=4, copies=2, limit=30, seed=3)
    again = plant(str(FLICKR / "flickr8k-224-00005.tar"), tmp_path / "again", sources=4, copies=2, limit=30, seed=3,
                  others=others)  # fmt: skip
    assert light.groups == again.groups  # no edit needs another photo: the planting is what it was


def test_membership_statistics_tpr_at_low_fpr_and_seed_intervals():
    from dedup.attack.statistics import seed_mean_with_interval, tpr_at_fpr

    heldout = np.linspace(1.0, 2.0, 1000)  # the lowest 1 % of held-out losses lie below 1.01
    assert tpr_at_fpr(np.array([0.5, 0.9, 1.5, 1.8]), heldout) == 0.5
    rng = np.random.default_rng(0)
    alike = [(rng.normal(0, 1, 200), rng.normal(0, 1, 400)) for _ in range(3)]
    interval = seed_mean_with_interval([m for m, _ in alike], [h for _, h in alike], "auc")
    assert (
        interval["seeds"] == 3 and interval["low"] < 0.5 < interval["high"] and interval["high"] - interval["low"] < 0.1
    )
    apart = seed_mean_with_interval([rng.normal(-3, 1, 200)], [rng.normal(0, 1, 400)], "auc")
    assert apart["low"] > 0.95


def test_weight_average_is_what_training_returns():
    from dedup.attack.diffusion import ModelSettings, train

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32)
    settings = dict(resolution=8, channels=(16, 16), train_steps=3, batch_size=8)
    plain, _ = train(images, None, ModelSettings(**settings))
    averaged, _ = train(images, None, ModelSettings(**settings, ema=0.5))
    untrained, _ = train(images, None, ModelSettings(**{**settings, "train_steps": 0}))
    for p, a, u in zip(plain.parameters(), averaged.parameters(), untrained.parameters()):
        if not torch.equal(p, u):  # a parameter that training moved: the average is not the last weights
            assert not torch.equal(a, p)
            break
    else:
        raise AssertionError("training moved no parameter")


def test_caption_verify_on_shards_without_captions_says_so(tmp_path):
    """CIFAR-10 samples stripped of their captions: a caption preset stops with a clear input error."""
    import webdataset as wds

    from dedup.io.reader import iter_shard

    data = tmp_path / "data"
    data.mkdir()
    with wds.TarWriter(str(data / "nocaptions-00000.tar")) as writer:
        for number, sample in enumerate(
            iter_shard(str(CIFAR / "cifar10-test-00005.tar.gz"), on_fault=lambda fault: None)
        ):
            writer.write({"__key__": sample.key, "jpg": sample.files["jpg"]})
            if number == 59:
                break
    preset = tmp_path / "verify-tiny-flickr.toml"
    preset.write_text(TINY_CAPTION_PRESET)
    result = run_cli("verify", tmp_path / "run", "--preset", preset, "--shards", data, check=False)
    assert result.returncode == 2
    assert "none of the 60 training samples has a caption" in result.stderr


def test_white_box_counts_a_copy_of_a_heavily_duplicated_image():
    """A perfect copy of an image held 60 times: against every training row its 50 nearest are its own copies
    (ratio ~1, never extracted); against one image per group it is extracted, as the paper's rule intends."""
    from dedup.attack.attacks import white_box_per_group

    rng = np.random.default_rng(0)
    unique = rng.random((100, 4, 4, 3))
    training = np.concatenate([unique, np.repeat(unique[:1], 60, 0) + 0.002 * rng.standard_normal((60, 4, 4, 3))])
    rank = np.r_[np.zeros(100, int), np.arange(1, 61)]  # row 0 and the 60 copies form one group, row 0 ranked first
    generation = unique[:1] + 0.002 * rng.standard_normal((1, 4, 4, 3))  # as close to it as its copies are
    assert not white_box(generation.reshape(1, -1), training.reshape(len(training), -1)).extracted[0]
    result, nearest, references = white_box_per_group(generation, training, rank, 0.5, 50)
    assert result.extracted[0] and nearest[0] == 0 and len(references) == 100


def test_verify_preset_without_the_shared_images_says_where_to_point(tmp_path):
    result = run_cli(
        "verify",
        tmp_path / "run",
        "--preset",
        "cifar-quick",
        env={"DEDUP_SHARED_DATA": str(tmp_path / "nowhere")},
        check=False,
    )
    assert result.returncode == 3
    assert "DEDUP_SHARED_DATA" in result.stderr and str(tmp_path / "nowhere") in result.stderr


def test_training_continued_from_a_checkpoint_is_the_uninterrupted_training():
    """The checkpoint holds the whole training state (weights, optimizer, average, both generators): a training
    continued from step 4 ends with the weights of the one that ran 8 steps without stopping."""
    import tempfile
    from pathlib import Path

    from dedup.attack.diffusion import Checkpoint, train
    from dedup.settings import ModelSettings

    images = np.random.default_rng(0).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32)
    settings = ModelSettings(resolution=8, channels=(8, 16, 16), train_steps=8, batch_size=8, ema=0.9)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Checkpoint(Path(folder) / "c.pt", "this training", every=4)
        uninterrupted, stats = train(images, None, settings, checkpoint=checkpoint)
        assert torch.load(checkpoint.path, weights_only=True)["state"]["step"] == 4  # the last one before the end
        messages: list[str] = []
        continued, _ = train(images, None, settings, log=messages.append, checkpoint=checkpoint)
        assert any("continuing from step 4" in message for message in messages)
        other = Checkpoint(checkpoint.path, "another training", every=4)
        from_scratch, _ = train(images, None, replace_seed(settings, 1), checkpoint=other)  # not continued
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, continued.state_dict()[name]), name
    assert any(not torch.equal(v, from_scratch.state_dict()[k]) for k, v in uninterrupted.state_dict().items())
    assert stats["final_loss"] > 0


def test_a_damaged_checkpoint_stops_with_what_to_do(tmp_path):
    """A checkpoint that cannot be read is neither trusted nor silently thrown away: exit 2, naming the file."""
    from dedup.attack.diffusion import Checkpoint, CheckpointError

    path = tmp_path / "verify-model-A.checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="delete it to train that model from the start") as caught:
        Checkpoint(path, "identity").load()
    assert caught.value.exit_code == 2 and str(path) in str(caught.value) and path.exists()


def replace_seed(settings, seed: int):
    from dataclasses import replace

    return replace(settings, seed=seed)


@pytest.mark.slow
def test_a_killed_verify_rerun_ends_with_the_same_verify_json(tmp_path):
    """SIGKILL at a random point of model A's training (after its first checkpoint), then the same command
    again: it continues from the checkpoint and writes the verify.json of a run never stopped."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    preset = tmp_path / "verify-tiny.toml"
    plant = 'unique = 120\nsources = 3\ncopies = 10\ntransforms = ["exact", "reencode"]\nshard_size = 75'
    preset.write_text(
        tiny_cifar_preset(plant, model="checkpoint_every = 5").replace("train_steps = 4", "train_steps = 40")
    )
    seed = random.SystemRandom().randrange(1_000_000)
    print(f"kill point seed {seed}")  # shown by pytest on failure: the kill point can be replayed
    delay = random.Random(seed).uniform(0.0, 0.5)
    command = [sys.executable, "-m", "dedup.cli", "verify", str(tmp_path / "killed"), "--preset", str(preset)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = RunFolder(tmp_path / "killed").verify_checkpoint("A")
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    assert process.poll() is None, "verify ended before it could be killed in training"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not RunFolder(tmp_path / "killed").verify_measured("B").exists()
    resumed = run_cli("verify", tmp_path / "killed", "--preset", preset)
    assert "continuing from step" in resumed.stderr or "reusing" in resumed.stderr
    run_cli("verify", tmp_path / "whole", "--preset", preset)
    killed, whole = (json.loads((tmp_path / name / "verify.json").read_text()) for name in ("killed", "whole"))
    assert without_times(killed, tmp_path / "killed") == without_times(whole, tmp_path / "whole")
    assert killed["complete"] is True and not checkpoint.exists()


def without_times(report: dict, folder) -> object:
    """verify.json less what differs between two runs of the same settings: wall times, the folder's name and
    the code's commit (a commit made between the two runs here)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds") and k not in ("run_dir", "code")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(folder), "RUN") if isinstance(value, str) else value

    return strip(report)


def test_the_tables_of_docs_verify_are_the_committed_results():
    """Every verify-table block of docs/verify.md is what its committed verify.json renders to."""
    from conftest import ROOT

    from dedup.attack.tables import render_document

    assert render_document(ROOT / "docs" / "verify.md", ROOT / "docs" / "results" / "verify", check=True) == []

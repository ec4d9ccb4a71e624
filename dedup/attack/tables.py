"""docs/verify.md's tables, rendered from the verify.json files the docs cite (committed under
docs/results/verify/), so every number in them can be regenerated and checked.

A table sits in the document between `<!-- verify-table NAME -->` and `<!-- /verify-table -->`, NAME naming
`RESULTS/NAME.json` (a verify.json as `dedup verify` wrote it); `<!-- verify-table NAME copies -->` renders what
each arm kept of each edit's planted copies instead (a `--dedup-only` run has that alone). `render_document`
rewrites those blocks and leaves the rest of the text as it is; with `check`, it only says which blocks differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dedup.errors import InputError

BLOCK = re.compile(
    r"(<!-- verify-table (?P<name>[\w.@-]+)(?: (?P<kind>arms|copies|dose))? -->\n)(?P<body>.*?)(<!-- /verify-table -->)",
    re.DOTALL,
)


def _interval(value: dict | None, digits: int = 3) -> str:
    if not value or value.get("mean") is None:
        return "n/a"
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def _count(value: dict | None) -> str:
    if not value or value.get("mean") is None:
        return "n/a"
    return f"{value['mean']:g} [{value['low']:g}, {value['high']:g}]"


def _seeds(report: dict) -> list[int]:
    return list(report["settings"].get("seeds") or [report["settings"]["model"]["seed"]])


def arms_table(report: dict) -> str:
    """One row per arm: what it trained on, images extracted per seed and pooled, membership with TPR beside."""
    seeds = _seeds(report)
    false = all("false_extracted_images" in report["summary"][name] for name in report["training_images"])
    lines = [
        "| arm | dedup | training images | extracted, seeds " + " / ".join(map(str, seeds)) + " | extracted, mean "
        "[95 %] | membership AUC, duplicated [95 %] | TPR at 1 % FPR, duplicated | AUC, unique |"
        + (" false extractions of unseen photos, per seed |" if false else ""),
        "| --- " * (9 if false else 8) + "|",
    ]
    for name, images in report["training_images"].items():
        summary = report["summary"][name]
        extracted = summary["extracted_images"]
        lines.append(
            f"| {name} | {report['arm_configs'].get(name, '')} | {images:,} | "
            + " / ".join(f"{count:g}" for count in extracted["per_seed"])
            + f" | {_count(extracted)} | {_interval(summary['auc_duplicated_vs_heldout'])} | "
            f"{_interval(summary['tpr_at_1pct_fpr_duplicated_vs_heldout'])} | "
            f"{_interval(summary['auc_unique_vs_heldout'])} |"
            + (" " + " / ".join(map(str, summary["false_extracted_images"])) + " |" if false else "")
        )
    return "\n".join(lines) + "\n"


def differences_table(report: dict) -> str:
    """Paired differences of images extracted (same seeds, same images), with their 95 % intervals."""
    differences = report.get("differences") or {}
    if not differences:
        return ""
    lines = ["| difference | per seed | mean [95 %] | interval excludes 0 |", "| --- | --- | --- | --- |"]
    for pair, value in differences.items():
        excludes = value["low"] > 0 or value["high"] < 0 if value.get("mean") is not None else False
        per_seed = " / ".join(f"{count:g}" for count in value["per_seed"])
        lines.append(f"| {pair} | {per_seed} | {_count(value)} | {'yes' if excludes else 'no'} |")
    return "\n".join(lines) + "\n"


def provenance(report: dict) -> str:
    code = report.get("code") or {}
    commit = (code.get("commit") or "unknown")[:7] + (" with changes" if code.get("changed") else "")
    measured = report.get("arms_measured", [])
    state = (
        "complete"
        if report.get("complete")
        else "incomplete: arms " + ", ".join(measured) + " measured"
        if measured
        else "deduplication only, no model trained"
    )
    return f"Preset `{report.get('preset_name', '?')}`, code {commit}, {state}; {report.get('seconds', '?')} s in verify.\n"


def copies_table(report: dict) -> str:
    """Each edit's planted copies and how many each arm trained on, with the images extracted by edit where
    the planting gave every photo one edit and models were trained."""
    arms = list(report["training_images"])
    by_edit = report.get("copies_by_edit") or {}
    extracted = {name: (report.get("summary") or {}).get(name, {}).get("extracted_by_edit", {}) for name in arms}
    header = "| edit | copies | " + " | ".join(f"kept by {name}" for name in arms)
    header += "".join(f" | extracted by {name}, per seed" for name in arms if extracted[name])
    lines = [header + " |", "| --- " * (2 + len(arms) + sum(1 for n in arms if extracted[n])) + "|"]
    for edit, value in by_edit.items():
        row = f"| {edit} | {value['copies']:,} | " + " | ".join(f"{value['kept'][name]:,}" for name in arms)
        row += "".join(" | " + " / ".join(map(str, extracted[name].get(edit, []))) for name in arms if extracted[name])
        lines.append(row + " |")
    return "\n".join(lines) + "\n"


def dose_table(report: dict) -> str:
    """The dose-response: per arm, the samples of each duplicated photo it trained on, and what was extracted."""
    dose = report.get("kept_per_duplicated_image") or {}
    lines = [
        "| arm | samples of each duplicated photo trained on | extracted, per seed | extracted, mean [95 %] |",
        "| --- | --- | --- | --- |",
    ]
    for name in sorted(report["summary"], key=lambda arm: dose.get(arm, 0)):
        extracted = report["summary"][name]["extracted_images"]
        per_seed = " / ".join(f"{count:g}" for count in extracted["per_seed"])
        lines.append(f"| {name} | {dose.get(name, 'n/a')} | {per_seed} | {_count(extracted)} |")
    return "\n".join(lines) + "\n"


def render(report: dict, kind: str = "arms") -> str:
    if kind == "copies":
        return provenance(report) + "\n" + copies_table(report)
    if kind == "dose":
        return provenance(report) + "\n" + dose_table(report)
    parts = [provenance(report), arms_table(report)]
    differences = differences_table(report)
    if differences:
        parts.append(differences)
    return "\n".join(parts)


def load_results(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: the table {name!r} renders that verify.json (copy the run's there)")
    try:
        report = json.loads(path.read_text())
    except ValueError as error:
        raise InputError(f"{path} is not a verify.json ({error})") from None
    if "training_images" not in report:
        raise InputError(f"{path} is not a verify.json (no training_images): copy a run's verify.json there")
    expected = name.split("@")[0]
    if report.get("preset_name") not in (None, expected):
        raise InputError(f"{path} holds a run of preset {report['preset_name']!r}, not {expected!r}")
    return report


def render_document(document: Path, results: Path, check: bool = False) -> list[str]:
    """Rewrite every verify-table block of `document` from `results`; returns the names of the blocks that
    changed (with `check`, nothing is written). The document is read whole and written once, or not at all."""
    text = document.read_text()
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        name, kind = match["name"], match["kind"] or "arms"
        report = load_results(results, name)
        if kind in ("arms", "dose") and "summary" not in report:
            raise InputError(f"{results / name}.json has no models measured (a --dedup-only run?): use a copies table")
        body = render(report, kind)
        if body != match["body"]:
            changed.append(name)
        return match[1] + body + match[5]

    rendered = BLOCK.sub(replace, text)
    if not BLOCK.search(text):
        raise InputError(f"{document} has no <!-- verify-table NAME --> block to render")
    if changed and not check:
        from dedup.io.atomic import atomic_open

        with atomic_open(document, "w") as handle:
            handle.write(rendered)
    return changed

"""docs/verify.md's tables, rendered from the verify.json files the docs cite (committed under
docs/results/verify/), so every number in them can be regenerated and checked.

A table sits in the document between `<!-- verify-table NAME -->` and `<!-- /verify-table -->`, NAME naming
`RESULTS/NAME.json` (a verify.json as `dedup verify` wrote it). `render_document` rewrites those blocks and
leaves the rest of the text as it is; with `check`, it only says which blocks differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dedup.errors import InputError

BLOCK = re.compile(r"(<!-- verify-table (?P<name>[\w.@-]+) -->\n)(?P<body>.*?)(<!-- /verify-table -->)", re.DOTALL)


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
    lines = [
        "| arm | dedup | training images | extracted, seeds " + " / ".join(map(str, seeds)) + " | extracted, mean "
        "[95 %] | membership AUC, duplicated [95 %] | TPR at 1 % FPR, duplicated | AUC, unique |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
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
    state = "complete" if report.get("complete") else "incomplete: arms " + ", ".join(report.get("arms_measured", []))
    return f"Preset `{report.get('preset_name', '?')}`, code {commit}, {state}; {report.get('seconds', '?')} s in verify.\n"


def render(report: dict) -> str:
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
    if "summary" not in report or "training_images" not in report:
        raise InputError(f"{path} is not a finished verify.json (no summary): rerun its verify to the end")
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
        name = match["name"]
        body = render(load_results(results, name))
        if body != match["body"]:
            changed.append(name)
        return match[1] + body + match[4]

    rendered = BLOCK.sub(replace, text)
    if not BLOCK.search(text):
        raise InputError(f"{document} has no <!-- verify-table NAME --> block to render")
    if changed and not check:
        from dedup.io.atomic import atomic_open

        with atomic_open(document, "w") as handle:
            handle.write(rendered)
    return changed

"""The OpticalRS build report: counts per source and reason, duplicate clusters."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geofm.builders.opticalrs_manifest import CHIP_REASONS, REASONS, Params, Source

# ---------------------------------------------------------------------------------------------
# Report


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    return {k: int(v) for k, v in frame[column].value_counts().sort_index().items()}


def _source_report(source: Source, images: pd.DataFrame, chips: pd.DataFrame) -> dict[str, Any]:
    mine = images[images["source"] == source.name]
    my_chips = chips[(chips["source"] == source.name) & (chips["outcome"] == "kept")]
    outcomes = _counts(mine, "outcome")
    return {
        "role": source.role, "licence": source.licence, "gsd_m": source.gsd_m,
        "images": len(mine), "kept": outcomes.pop("kept", 0), "eval": outcomes.pop("eval", 0),
        "dropped": {r: outcomes.get(r, 0) for r in REASONS if outcomes.get(r, 0)},
        "chips": int((my_chips["chip_status"] == "ok").sum()),
        "chips_dropped": {r: n for r, n in _counts(my_chips, "chip_status").items() if r != "ok"},
    }


def build_report(sources: list[Source], images: pd.DataFrame, chips: pd.DataFrame,
                 clusters: list[dict[str, Any]], params: Params,
                 manifest: Path) -> dict[str, Any]:
    """The build report: counts per source and reason, clusters and unreadable files."""
    per_source = {s.name: _source_report(s, images, chips) for s in sources}
    totals: dict[str, Any] = {"images": len(images)}
    for key in ("kept", "eval", "chips"):
        totals[key] = sum(r[key] for r in per_source.values())
    totals["dropped"] = {r: sum(s["dropped"].get(r, 0) for s in per_source.values())
                         for r in REASONS}
    totals["chips_dropped"] = {r: sum(s["chips_dropped"].get(r, 0) for s in per_source.values())
                               for r in CHIP_REASONS}
    bad = images[images["outcome"] == "unreadable"]
    return {
        "builder": "opticalrs", "manifest": str(manifest), "params": asdict(params),
        "totals": totals, "sources": per_source,
        "clusters": clusters,
        "unreadable": [{"image": f"{s}/{p}", "detail": d}
                       for s, p, d in zip(bad["source"], bad["relpath"], bad["detail"])],
    }


def unreadable_note(report: dict[str, Any]) -> str | None:
    """One line naming the unreadable images a finished build left out, or None."""
    bad = report.get("unreadable") or []
    if not bad:
        return None
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (f"{len(bad)} unreadable image(s) left out: {bad[0]['image']} "
            f"({bad[0]['detail']}){more}; all are listed in report.md")


def report_markdown(report: dict[str, Any], max_clusters: int = 50) -> str:
    """The report as Markdown: per-source table, totals, the first clusters, unreadable files."""
    reasons = [r for r in REASONS if report["totals"]["dropped"][r]]
    head = ["source", "role", "licence", "images", "kept", "eval", *reasons, "chips",
            "chips dropped"]
    lines = ["# OpticalRS build report", "", f"Manifest: `{report['manifest']}`", "",
             "Parameters: " + ", ".join(f"{k}={v}" for k, v in report["params"].items()), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, role: str, licence: str, r: dict[str, Any]) -> str:
        cells = [name, role, licence, r["images"], r["kept"], r["eval"],
                 *[r["dropped"].get(k, 0) for k in reasons], r["chips"],
                 sum(r["chips_dropped"].values())]
        return "| " + " | ".join(str(c) for c in cells) + " |"

    for name, r in report["sources"].items():
        lines.append(row(name, r["role"], r["licence"], r))
    lines.append(row("**total**", "", "", report["totals"]))
    clusters = report["clusters"]
    lines += ["", f"## Duplicate clusters ({len(clusters)})", ""]
    if len(clusters) > max_clusters:
        lines += [f"The first {max_clusters}; all are in report.json.", ""]
    for c in clusters[:max_clusters]:
        kept = f"kept `{c['kept']}`" if c["kept"] else "holds eval images: no pretrain image kept"
        lines.append(f"- cluster {c['cluster']}, {kept}: " + ", ".join(
            f"`{m['image']}` ({m['outcome']}, {m['distance']} bits)" for m in c["members"]))
    if report["unreadable"]:
        lines += ["", f"## Unreadable images ({len(report['unreadable'])})", ""]
        lines += [f"- `{u['image']}`: {u['detail']}" for u in report["unreadable"][:max_clusters]]
    return "\n".join(lines) + "\n"


def _write_report(out: Path, report: dict[str, Any], images: pd.DataFrame) -> None:
    for name, text in (("report.json", json.dumps(report, indent=1)),
                       ("report.md", report_markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    columns = ["image", "source", "relpath", "outcome", "detail", "width", "height", "bands",
               "lo", "hi", "sha1", "phash", "cluster", "distance", "chips"]
    _write_parquet_atomic(pa.Table.from_pandas(images[columns], preserve_index=False),
                          out / "images.parquet")


def _write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> None:
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, **kwargs)
    os.replace(tmp, path)

"""What a user reads of a diagnosis: the Rich summary in the terminal and the self-contained ``diagnosis.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mmvid.results.diagnosis.passes import SPLITS
from mmvid.results.html_page import CSS, embed_png, esc, html_table


def render(data: dict[str, Any], console) -> None:
    """The Rich summary: a table of every figure per modality and split, then what was measured."""
    mods = data["modalities"]
    table = Table(title=f"diagnosis of {Path(data['run']).name} ({data['method']})")
    table.add_column("figure")
    for m in mods:
        for split in SPLITS:
            table.add_column(f"{m}, {split}", justify="right")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    sh = data["shapley"]
    table.add_row("Shapley value (true-class prob.)", *[f"{sh[s]['phi'][m]:+.3f}" for m in mods for s in SPLITS])
    table.add_row("Shapley share", *[pct(sh[s]["share"][m]) for m in mods for s in SPLITS])
    table.add_row("utilisation (bounded)", *[f"{data['utilisation'][s][m]:+.2f}" for m in mods for s in SPLITS])
    table.add_row("probe on fused encoder", *[pct(data["probes"][m]["fused_encoder"][s]) for m in mods for s in SPLITS])
    if all("alone_encoder" in data["probes"][m] for m in mods):
        table.add_row("probe on alone encoder", *[pct(data["probes"][m]["alone_encoder"][s]) for m in mods for s in SPLITS])
        table.add_row("alone run", *[pct(data["probes"][m]["alone_run"][s]) for m in mods for s in SPLITS])
    console.print(table)
    for item in data["measured"]:
        methods = f" [dim]methods aimed at this: {', '.join(item['methods'])}[/]" if item.get("methods") else ""
        console.print(f"- {escape(item['text'])} [dim]({item['figure']})[/]{methods}", soft_wrap=True)


def write_html(data: dict[str, Any], figures: list[Path], path: Path) -> Path:
    """One self-contained page: the measurements, the tables and the four figures (embedded PNG)."""
    mods = data["modalities"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmvid diagnosis</title><style>{CSS}</style></head><body>",
             f"<h1>Diagnosis of {esc(Path(data['run']).name)}</h1>",
             f"<p class='muted'>{esc(data['method'])}; cache {esc(data['cache'])}; {esc(data['created'])}</p>",
             "<h2>What was measured</h2><ul>"]
    for item in data["measured"]:
        meth = f" Methods aimed at this pattern: {esc(', '.join(item['methods']))}." if item.get("methods") else ""
        parts.append(f"<li>{esc(item['text'])} (figure: {esc(item['figure'])}).{meth}</li>")
    parts.append("</ul><p class='muted'>Measurements, not verdicts: some imbalance can help (PDMP, ARL).</p>")
    rows = []
    for split in SPLITS:
        s = data["shapley"][split]
        rows += [[f"Shapley value, {split}", *[f"{s['phi'][m]:+.4f}" for m in mods]],
                 [f"Shapley share, {split}", *[pct(s["share"][m]) for m in mods]],
                 [f"utilisation (bounded), {split}", *[f"{data['utilisation'][split][m]:+.3f}" for m in mods]]]
    for k in ("fused_encoder", "alone_encoder", "alone_run"):
        if all(k in data["probes"][m] for m in mods):
            rows.append([f"{k.replace('_', ' ')} (held out)", *[pct(data["probes"][m][k]["test"]) for m in mods]])
    parts.append("<h2>Summary</h2>" + html_table(["figure", *mods], rows))
    for png in figures:
        parts.append(f"<h2>{esc(png.stem.replace('_', ' '))}</h2>" + embed_png(png, png.stem))
    dom = data["shapley"]["test"]["most_dominated_samples"]
    parts.append("<h2>Held-out samples most dominated by one modality</h2>"
                 + html_table(["modality", "sample", "class", "share"], [[d["modality"], d["name"], d["class"], pct(d["share"])] for d in dom]))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

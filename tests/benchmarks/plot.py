"""The headline figures of the latest benchmark results as one PNG, beside the JSON.

The plot reads the per-section result files (``<section>.json``), not the combined document:
each holds the newest result of its section, so sections re-run one at a time after an
interrupted run still make one complete picture. Every bar says which mode (quick or full) and
which day its figure comes from, because a quick run's samples are fewer and, for some
sections, its security level lower - figures from the two modes are not interchangeable.

Bars are horizontal with log scales: the figures of one panel span three to four orders of
magnitude (a proof in milliseconds beside a deposit's mint in seconds), and every bar carries
its value as text, so the scale never has to be read off the axis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

PANELS = (("ms", "latency (milliseconds, log scale)", "tab:blue"),
          ("s", "durations (seconds, log scale)", "tab:orange"),
          ("/s", "throughput (per second, log scale)", "tab:green"))


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    unit: str
    note: str  # "quick" or "" and the date of the run the figure comes from


def read_results(out_dir: Path, section_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The per-section records found in ``out_dir``; unreadable ones are skipped (a file from a
    run killed mid-write cannot exist - writes are atomic - but a hand-edited one can)."""
    records: dict[str, dict[str, Any]] = {}
    for name in section_names:
        path = out_dir / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records[name] = record
    return records


def headline_bars(records: Mapping[str, Mapping[str, Any]], headlines: Sequence[Any]) -> list[Bar]:
    bars = []
    for headline in headlines:
        record = records.get(headline.section)
        if not record or not isinstance(record.get("figures"), Mapping):
            continue
        value = headline.value(record["figures"])
        if value is None or value <= 0:
            continue
        bars.append(Bar(headline.label, value, headline.unit, _note(record)))
    return bars


def _note(record: Mapping[str, Any]) -> str:
    day = str(record.get("finished_at", ""))[:10]
    return ("quick " if record.get("quick") else "") + day


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _barh(ax: Axes, labels: list[str], values: list[float], color: str | list[str], title: str,
          label_at: list[float] | None = None) -> None:
    positions = list(range(len(labels)))
    ax.barh(positions, values, color=color)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()  # first headline on top, in the order of the table
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", which="major", alpha=0.3)
    low, high = min(values), max(values)
    ax.set_xlim(low / 3, high * 6)  # room on the right for the value labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    for y, v, at in zip(positions, values, label_at or values, strict=True):
        ax.text(at * 1.1, y, _fmt(v), va="center", fontsize=8)


def _duration_panel(ax: Axes, records: Mapping[str, Mapping[str, Any]], sections: Sequence[Any]) -> int:
    """Measured seconds of each section's latest run against the table's expectation for that
    mode; failed sections in red, so a broken section is visible in the picture too."""
    labels, measured, expected, colors = [], [], [], []
    for section in sections:
        record = records.get(section.name)
        if not record or not isinstance(record.get("seconds"), int | float) or record["seconds"] < 0:
            continue
        quick = bool(record.get("quick"))
        labels.append(f"{section.name} ({'quick' if quick else 'full'}{', FAILED' if 'error' in record else ''})")
        measured.append(max(float(record["seconds"]), 0.001))  # a log axis has no zero
        expected.append(float(section.expected_s(quick)))
        colors.append("tab:red" if "error" in record else "tab:gray")
    if not labels:
        ax.set_axis_off()
        return 0
    _barh(ax, labels, measured, colors, "section run time (seconds, log scale); | = expected",
          label_at=[max(m, e) for m, e in zip(measured, expected, strict=True)])  # the value clear of the mark
    for y, e in enumerate(expected):
        ax.plot([e, e], [y - 0.4, y + 0.4], color="black", linewidth=1.5)
    ax.set_xlim(min(measured + expected) / 3, max(measured + expected) * 6)
    return len(labels)


def write_plot(out_dir: Path, sections: Sequence[Any], headlines: Sequence[Any], png: Path) -> list[str]:
    """Draw the plot into ``png`` (atomically: a reader never sees half a file) and return the
    labels of the headline figures drawn; an empty list still draws the section run times."""
    records = read_results(out_dir, [s.name for s in sections])
    bars = headline_bars(records, headlines)
    panels = [(unit, title, color, [b for b in bars if b.unit == unit]) for unit, title, color in PANELS]
    panels = [p for p in panels if p[3]]
    heights = [max(1.6, 0.3 * len(p[3]) + 0.8) for p in panels] + [max(1.6, 0.3 * len(sections) + 0.8)]
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 1.0),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    notes = {b.note for b in bars}
    mixed = len(notes) > 1  # figures from different runs: each bar says which
    for ax, (_unit, title, color, panel_bars) in zip(axes[:, 0], panels, strict=False):
        _barh(ax, [f"{b.label}  [{b.note.strip()}]" if mixed and b.note.strip() else b.label for b in panel_bars],
              [b.value for b in panel_bars], color, title)
    drawn_sections = _duration_panel(axes[-1, 0], records, sections)
    if mixed:
        origin = "figures from several runs (quick ones marked)"
    else:
        note = next(iter(notes), "")
        kind = "quick run (fewer samples, test level outside primitives)" if note.startswith("quick") else "full run"
        origin = kind + (f" of {note.split()[-1]}" if note else "")
    fig.suptitle(f"Fusion Prime benchmarks - {len(bars)} headline figures, {drawn_sections} sections; {origin}",
                 fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.99))  # the title clear of the first panel
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(png)
    return [b.label for b in bars]

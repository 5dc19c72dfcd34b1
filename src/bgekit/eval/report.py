"""A benchmark suite's results as a person reads them: a table per language (or dataset)
and retrieval mode with the average, as Markdown, and an HTML page with the table and a
bar chart (inline SVG, no dependencies); a PNG of the chart when matplotlib is installed
(``pip install 'bgekit[report]'``)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bgekit.io import atomic_write

# Bar colours per mode (colour-blind safe: Okabe-Ito).
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


@dataclass(frozen=True)
class SuiteScores:
    """``scores[run][subset][metric]`` as fractions: a run is a retrieval mode (``dense``,
    ``hybrid``, ``dense+rerank``, ...), a subset a language or dataset."""

    suite: str
    split: str
    model: str
    metric: str  # the headline metric of the table and the chart
    scores: Mapping[str, Mapping[str, Mapping[str, float]]]

    def runs(self) -> list[str]:
        return list(self.scores)

    def subsets(self) -> list[str]:
        seen: dict[str, None] = {}
        for per in self.scores.values():
            seen.update(dict.fromkeys(per))
        return list(seen)

    def value(self, run: str, subset: str, metric: str | None = None) -> float | None:
        got = self.scores.get(run, {}).get(subset, {})
        return got.get(metric or self.metric)

    def average(self, run: str, metric: str | None = None) -> float | None:
        """The mean over the subsets the run has (``None`` when it has none)."""
        values = [self.value(run, s, metric) for s in self.subsets()]
        kept = [v for v in values if v is not None]
        return sum(kept) / len(kept) if kept else None


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown_table(result: SuiteScores) -> str:
    """Subsets as rows, runs as columns, the headline metric x 100, the average last."""
    runs = result.runs()
    head = f"| {result.suite} {result.split} ({result.metric} x 100) | " + " | ".join(runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for subset in result.subsets():
        lines.append(f"| {subset} | " + " | ".join(_cell(result.value(r, subset)) for r in runs) + " |")
    lines.append("| **average** | " + " | ".join(f"**{_cell(result.average(r))}**" for r in runs) + " |")
    return "\n".join(lines) + "\n"


def bar_chart_svg(result: SuiteScores, width: int = 900, height: int = 360) -> str:
    """Grouped bars: one group per subset (and the average), one bar per run."""
    runs, groups = result.runs(), [*result.subsets(), "avg"]
    left, bottom, top = 50, 60, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(runs))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#333"/>',
    ]
    for tick in range(0, 101, 20):
        y = top + plot_h * (1 - tick / 100)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for r, run in enumerate(runs):
            v = result.average(run) if group == "avg" else result.value(run, group)
            if v is None:
                continue
            h = plot_h * max(0.0, min(1.0, v))
            x = x0 + r * bar_w
            colour = _COLOURS[r % len(_COLOURS)]
            label = html.escape(f"{run} {group}: {100 * v:.2f}")
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w * 0.95:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{label}</title></rect>'
            )
        cx = left + g * group_w + group_w / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{html.escape(group)}</text>'
        )
    for r, run in enumerate(runs):  # legend
        x = left + r * 140
        parts.append(
            f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{_COLOURS[r % len(_COLOURS)]}"/>'
        )
        parts.append(f'<text x="{x + 16}" y="{height - 12}">{html.escape(run)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_page(result: SuiteScores, png: str | None = None) -> str:
    """A page with the table (every metric the runs have, the headline one first) and the chart."""
    runs, subsets = result.runs(), result.subsets()
    title = html.escape(f"{result.model} on {result.suite} ({result.split})")
    rows = []
    for subset in [*subsets, "average"]:
        cells = []
        for run in runs:
            v = result.average(run) if subset == "average" else result.value(run, subset)
            cells.append(f"<td>{_cell(v)}</td>")
        rows.append(f"<tr><th>{html.escape(subset)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(r)}</th>" for r in runs)
    chart = bar_chart_svg(result)
    image = f'<p><img src="{html.escape(png)}" alt="the same chart as a PNG"></p>' if png else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th:first-child{{text-align:left}}
tr:last-child{{font-weight:bold}}</style></head>
<body><h1>{title}</h1>
<p>{html.escape(result.metric)} x 100 per {"language" if len(subsets) > 1 else "dataset"}; average over the rows.</p>
<table><tr><th></th>{head}</tr>
{"".join(rows)}
</table>
<h2>{html.escape(result.metric)} by {"language" if len(subsets) > 1 else "dataset"}</h2>
{chart}
{image}
</body></html>
"""


def write_png(result: SuiteScores, path: Path) -> bool:
    """The chart as a PNG (matplotlib); ``False`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs, groups = result.runs(), [*result.subsets(), "avg"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) * max(1, len(runs))), 3.6), dpi=100)
    width = 0.8 / max(1, len(runs))
    for r, run in enumerate(runs):
        values = [result.average(run) if g == "avg" else result.value(run, g) for g in groups]
        xs = [g + r * width for g in range(len(groups))]
        ax.bar(xs, [100 * (v or 0.0) for v in values], width, label=run, color=_COLOURS[r % len(_COLOURS)])
    ax.set_xticks([g + width * (len(runs) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(f"{result.metric} x 100")
    ax.set_ylim(0, 100)
    ax.set_title(f"{result.model} on {result.suite} ({result.split})")
    ax.legend(ncols=min(4, len(runs)), fontsize="small")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return True


def write_report(result: SuiteScores, folder: Path) -> dict[str, Path]:
    """``report.md``, ``report.html`` and (with matplotlib) ``report.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"markdown": folder / "report.md", "html": folder / "report.html"}
    png = folder / "report.png"
    if write_png(result, png):
        out["png"] = png
    with atomic_write(out["markdown"]) as f:
        f.write(markdown_table(result).encode())
    with atomic_write(out["html"]) as f:
        f.write(html_page(result, png.name if "png" in out else None).encode())
    return out

"""The pieces every analysis figure is made of (orchestrator/plots.py draws the figures).

One style (:data:`STYLE`, text at least 9 pt), a figure of panels on an Agg canvas, ticks only
at measured values, lines with their intervals as error bars (points at one x dodged apart),
one legend outside the axes, the caption naming what the bars are (:func:`bars_rule`), and
saving, which first cuts every line of text to :data:`MOST_CHARS` characters
(:data:`MOST_CAPTION_CHARS` in the figure's title and caption), since a label from a results
file may be any length.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

import matplotlib
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, NullLocator

DPI = 110
MOST_PANELS = 24
MOST_TICKS = 12
MOST_CHARS = 56  # per line of a title, label, legend entry or tick
MOST_CAPTION_CHARS = 160  # per line of the figure's title and caption (they span the figure)
DODGE = 0.04
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12,
         "lines.markersize": 5, "errorbar.capsize": 3}
MARKERS, LINESTYLES = "osD^vP*Xph<>", ("-", "--", ":", "-.")


def styled(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    @wraps(draw)
    def inner(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return inner


def figure(panels: int, cols: int = 3, width: float = 4.0, height: float = 3.0,
            extra_width: float = 0.0, **share: Any) -> tuple[Figure, list[Axes]]:
    cols = max(1, min(panels, cols))
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols + extra_width, height * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **share).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def shorten(text: str, most: int = MOST_CHARS) -> str:
    """Each line of ``text`` cut to ``most`` characters, ending in … where it was cut."""
    return "\n".join(line if len(line) <= most else line[:most - 1] + "…"
                     for line in text.split("\n"))


def save(fig: Figure, path: Path) -> Path:
    wide = {fig.get_suptitle(), fig.get_supxlabel()}  # they span the figure
    for text in fig.findobj(Text):  # titles, labels, legend entries, ticks, the caption
        most = MOST_CAPTION_CHARS if text.get_text() in wide else MOST_CHARS
        if len(text.get_text()) > most:
            text.set_text(shorten(text.get_text(), most))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def spread(items: list, most: int) -> list:
    """At most ``most`` items, evenly spaced, first and last kept."""
    step = (len(items) - 1) / (most - 1) if len(items) > most else 1
    return [items[round(i * step)] for i in range(min(most, len(items)))]


def ticks(ax: Axes, values: Sequence[float], label: Callable[[float], str] = "{:g}".format,
           axis: str = "x") -> None:
    """Major ticks only at measured ``values`` (at most MOST_TICKS, evenly picked); no minor."""
    shown = spread(sorted({float(v) for v in values if v is not None}), MOST_TICKS)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(shown))
    target.set_minor_locator(NullLocator())
    target.set_ticklabels([label(v) for v in shown])


def line(ax: Axes, rows: pl.DataFrame, x: str, y: str, shift: float = 0.0, **style: Any) -> Any:
    """``y`` against ``x`` with its interval as error bars where ``<y>_lo``/``_hi`` exist.
    Several points at one x (layouts of equal sharing) are not joined by a line: they are
    drawn as markers, spread over ``DODGE`` of the axis' x range so each stays visible."""
    rows = rows.filter(pl.col(y).is_not_null()).sort(x)
    xs = [v + shift for v in rows[x].to_list()]
    if len(set(xs)) < len(xs):
        span = DODGE * ((max(xs) - min(xs)) or 1.0)
        seen = {v: xs.count(v) for v in set(xs)}
        rank: dict[float, int] = {}
        for i, v in enumerate(xs):
            rank[v] = rank.get(v, -1) + 1
            xs[i] = v + (rank[v] - (seen[v] - 1) / 2) * span / max(1, seen[v] - 1)
        style = {**style, "linestyle": "none"}
    ys = rows[y].to_list()
    bars = yerr(ys, rows[f"{y}_lo"], rows[f"{y}_hi"]) if f"{y}_lo" in rows.columns else None
    return ax.errorbar(xs, ys, yerr=bars, **style) if bars else ax.plot(xs, ys, **style)[0]


def yerr(ys: Sequence[float], los: Sequence, his: Sequence) -> list[list[float]] | None:
    """Error-bar lengths below and above each value (0 without an interval); None if none."""
    lo = [y - a if a is not None and y is not None else 0.0 for y, a in zip(ys, los)]
    hi = [b - y if b is not None and y is not None else 0.0 for y, b in zip(ys, his)]
    return [lo, hi] if any(lo) or any(hi) else None


def bars_rule(trials: Sequence[int | None]) -> str:
    """What the error bars of points with these trial counts are (the rule of
    :data:`analyze.INTERVAL_RULE`, naming only the cases that occur)."""
    counts = {n or 1 for n in trials}
    if counts <= {1}:
        return "one trial per point: no error bars"
    parts = []
    if any(n >= 3 for n in counts):
        parts.append("95 % t-interval of the mean over trials (n ≥ 3)")
    if 2 in counts:
        parts.append("min–max of the two trials (n = 2)")
    if 1 in counts:
        parts.append("none for a single trial")
    return "bars: " + "; ".join(parts)


def caption(frame: pl.DataFrame, *parts: str) -> str:
    """The figure's caption: what it selects, then what its bars are (or that there are none)."""
    trials = frame["trials"].to_list() if "trials" in frame.columns else [1]
    return "\n".join([*(p for p in parts if p), bars_rule(trials)])


def legend(fig: Figure, axes: Sequence[Axes], title: str | None = None,
            order: Sequence[str] = ()) -> None:
    """One legend for the figure, outside the axes on the right (each label once, in
    ``order`` first)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    labels = [x for x in order if x in seen] + [x for x in seen if x not in order]
    if labels:
        fig.legend([seen[x] for x in labels], labels, loc="outside right upper", title=title)


def styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour and marker per label, the same in every panel of a figure."""
    return {label: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]}
            for i, label in enumerate(labels)}

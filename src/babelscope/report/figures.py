"""Shared plots for report sections; every function returns ``(fig, ax)``.

Figures are made with matplotlib's object-oriented API on the Agg canvas (no pyplot state, no windows),
and matplotlib is imported only when a plot is drawn. Embed a figure with :func:`fig_to_img_html`,
which also closes it.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from babelscope.numeric import median
from babelscope.report.markup import esc

#: Resolution of embedded figures.
DPI = 110

#: Qualitative colours (matplotlib's tab10 then the light half of tab20), cycled for more groups.
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
]  # fmt: skip


def new_figure(width: float = 8.0, height: float = 4.0) -> tuple[Any, Any]:
    """A new figure with one axes on the Agg canvas (pyplot is not involved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def group_colors(groups: Sequence[Any]) -> dict[Any, str]:
    """One colour per distinct group, assigned in sorted order (stable across charts of the same groups)."""
    names = sorted({g for g in groups}, key=lambda g: (g is None, str(g)))
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}


def fig_to_img_html(fig: Any, caption: str, alt: str | None = None, dpi: int = DPI) -> str:
    """Close ``fig`` and return a ``<figure>`` with it as an inline base64 PNG, alt text and a caption."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        if "matplotlib.pyplot" in sys.modules:  # figures made with pyplot must be closed to be freed
            sys.modules["matplotlib.pyplot"].close(fig)
    png = buf.getvalue()
    width, height = struct.unpack(">II", png[16:24])  # from the IHDR chunk
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
        f'alt="{esc(alt or caption)}" loading="eager"><figcaption>{esc(caption)}</figcaption></figure>'
    )


# ------------------------------------------------------------------------------------------------- bars
def grouped_bar(
    values: Sequence[float | None],
    labels: Sequence[str],
    groups: Sequence[Any],
    *,
    ylabel: str = "",
    log: bool = False,
    descending: bool = False,
    group_order: Sequence[Any] | None = None,
    colors: Mapping[Any, str] | None = None,
    title: str | None = None,
) -> tuple[Any, Any]:
    """Bars grouped by category: one colour and a label per group, bars sorted by value within each group.

    Groups are ordered by ``group_order``, else by their median value. Missing (None/NaN) values are
    left out. Returns ``(fig, ax)``.
    """
    members: dict[Any, list[tuple[float, str]]] = {}
    for value, label, group in zip(values, labels, groups, strict=True):
        if value is None or not math.isfinite(value) or (log and value <= 0):
            continue
        members.setdefault(group, []).append((float(value), str(label)))
    for items in members.values():
        items.sort(key=lambda item: item[0], reverse=descending)
    if group_order is None:
        order = sorted(
            members, key=lambda g: (median([v for v, _ in members[g]]), str(g)), reverse=descending
        )
    else:
        order = [g for g in group_order if g in members] + [g for g in members if g not in group_order]
    colors = dict(colors or group_colors(list(members)))

    n = sum(len(items) for items in members.values())
    fig, ax = new_figure(min(18.0, max(6.0, 0.2 * n + 0.25 * len(order) + 1.5)), 4.2)
    gap, x, ticks, ticklabels = 0.8, 0.0, [], []
    bounds = []
    for group in order:
        start = x
        for value, label in members[group]:
            ax.bar(x, value, width=0.8, color=colors.get(group, "#888888"), edgecolor="none")
            ticks.append(x)
            ticklabels.append(label)
            x += 1
        bounds.append((group, start, x - 1))
        x += gap
    ax.set_xticks(ticks, ticklabels, rotation=90, fontsize=8 if n <= 60 else 6)
    ax.set_xlim(-0.8, max(x - gap, 0) - 0.2)
    if log:
        shown = [v for items in members.values() for v, _ in items]
        log_axis(ax.yaxis, min(shown, default=1.0), max(shown, default=10.0))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.05)
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (group, first, last) in enumerate(bounds):
        if i:
            ax.axvline(first - (gap + 1) / 2, color="#bbbbbb", lw=0.8, ls=":")
        name = "(none)" if group is None else str(group)
        wide = (last - first + 1) >= 0.6 * len(name)
        ax.text((first + last) / 2, 1.015, name, transform=trans, ha="center" if wide else "left",
                va="bottom", rotation=0 if wide else 45, rotation_mode="anchor", fontsize=8,
                color=darken(colors.get(group, "#888888")), fontweight="bold", clip_on=False)  # fmt: skip
    if title:
        ax.set_title(title, pad=28)
    return fig, ax


def darken(color: str, amount: float = 0.45) -> str:
    """``color`` (``#rrggbb``) mixed with black, for text that must stay readable on white."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{int(c * (1 - amount)):02x}" for c in (r, g, b))


def log_axis(axis: Any, lo: float | None = None, hi: float | None = None) -> None:
    """Log scale with plain-number tick labels (1, 2, 5, 10, 20, ...) instead of powers of ten.

    ``lo``/``hi`` (default: the data interval) pick the tick density: every integer multiple within a
    decade, 1-2-5 up to two decades, powers of ten beyond.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if lo is None or hi is None:
        lo, hi = axis.get_data_interval()
    ratio = hi / lo if lo and lo > 0 and math.isfinite(hi / lo) else math.inf
    subs = tuple(range(1, 10)) if ratio < 12 else (1.0, 2.0, 5.0) if ratio < 150 else (1.0,)
    if axis.axis_name == "y":
        axis.axes.set_yscale("log")
    else:
        axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------------------------------------ heatmap
def cluster_order(matrix: Any, method: str = "average") -> list[int]:
    """Row order from hierarchical clustering (scipy), so similar rows sit together."""
    import numpy as np
    from scipy.cluster.hierarchy import leaves_list, linkage

    data = np.nan_to_num(np.asarray(matrix, dtype=float))
    if data.shape[0] < 3:
        return list(range(data.shape[0]))
    return [int(i) for i in leaves_list(linkage(data, method=method, optimal_ordering=True))]


def heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    *,
    cluster: bool = False,
    cmap: str = "viridis",
    cbar_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    fmt: str = ".2f",
    title: str | None = None,
) -> tuple[Any, Any]:
    """A labelled heatmap; ``cluster=True`` reorders rows (and columns) by hierarchical clustering.

    A square matrix with the same row and column labels keeps one order for both. ``annotate`` writes the
    values in the cells (default: when the matrix has at most 15 x 15 cells).
    """
    import numpy as np

    data = np.asarray(matrix, dtype=float)
    col_labels = list(row_labels if col_labels is None else col_labels)
    row_labels = list(row_labels)
    if cluster:
        rows = cluster_order(data)
        same = data.shape[0] == data.shape[1] and row_labels == col_labels
        cols = rows if same else cluster_order(data.T)
        data = data[np.ix_(rows, cols)]
        row_labels = [row_labels[i] for i in rows]
        col_labels = [col_labels[i] for i in cols]
    n_rows, n_cols = data.shape
    fig, ax = new_figure(min(16.0, max(5.0, 0.3 * n_cols + 2.5)), min(16.0, max(3.5, 0.3 * n_rows + 1.5)))
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    small = 8 if max(n_rows, n_cols) <= 40 else 6
    ax.set_xticks(range(n_cols), col_labels, rotation=90, fontsize=small)
    ax.set_yticks(range(n_rows), row_labels, fontsize=small)
    ax.spines[["left", "bottom"]].set_visible(False)
    fig.colorbar(image, ax=ax, label=cbar_label, shrink=0.8)
    if annotate is None:
        annotate = n_rows <= 15 and n_cols <= 15
    if annotate:
        lo, hi = np.nanmin(data), np.nanmax(data)
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(data[i, j]):
                    light = (data[i, j] - lo) < 0.5 * (hi - lo)
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if light else "black")  # fmt: skip
    if title:
        ax.set_title(title)
    return fig, ax


# --------------------------------------------------------------------------------------------------- lines
def layer_lines(
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str = "layer",
    ylabel: str = "",
    colors: Mapping[str, str] | None = None,
    highlight: Sequence[str] = (),
    title: str | None = None,
) -> tuple[Any, Any]:
    """One line per series over layers (x = 0, 1, ...); ``highlight`` draws some series thicker."""
    fig, ax = new_figure(8.0, 4.0)
    colors = dict(colors or group_colors(list(series)))
    for name, values in series.items():
        ys = [math.nan if v is None else float(v) for v in values]
        bold = name in highlight
        style = (
            {"ms": 3, "lw": 2.2, "alpha": 1.0}
            if bold or not highlight
            else {"ms": 2, "lw": 1.2, "alpha": 0.6}
        )
        ax.plot(range(len(ys)), ys, marker="o", color=colors.get(name), label=str(name), **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if 1 < len(series) <= 30:
        ax.legend(fontsize=7, ncol=max(1, len(series) // 12 + 1), frameon=False,
                  loc="center left", bbox_to_anchor=(1.01, 0.5))  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title)
    return fig, ax


# ------------------------------------------------------------------------------------------------ scatter
def labeled_scatter(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    *,
    groups: Sequence[Any] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    diagonal: bool = False,
    colors: Mapping[Any, str] | None = None,
    title: str | None = None,
) -> tuple[Any, Any]:
    """A scatter plot with a text label at each point, coloured by ``groups`` (legend per group)."""
    fig, ax = new_figure(7.0, 5.0)
    groups = list(groups) if groups is not None else [None] * len(x)
    colors = dict(colors or group_colors(groups))
    for group in sorted(set(groups), key=lambda g: (g is None, str(g))):
        idx = [i for i, g in enumerate(groups) if g == group]
        ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=22, color=colors.get(group, "#1f77b4"),
                   label=None if group is None else str(group), zorder=3)  # fmt: skip
    for xi, yi, label in zip(x, y, labels, strict=True):
        ax.annotate(
            str(label), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7, color="#333333"
        )
    if logx:
        log_axis(ax.xaxis)
    if logy:
        log_axis(ax.yaxis)
    if diagonal:
        lo = min(min(x), min(y))
        hi = max(max(x), max(y))
        ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--", zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(g is not None for g in groups):
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig, ax

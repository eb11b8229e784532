"""Figures for reports, drawn with matplotlib's Agg backend (no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np

from .optional import require


def _pyplot():
    matplotlib = require("matplotlib", "the report's charts")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def accuracy_bars(
    methods: list[str],
    columns: list[str],
    means: np.ndarray,
    stds: np.ndarray,
    reference: dict[str, float] | None = None,
) -> bytes | None:
    """Grouped bars: one group per evaluation column, one bar per method (mean ± std, in %); NaN = missing.
    ``reference`` draws a dashed line per column (e.g. the full-data accuracy)."""
    if not methods or not columns or np.isnan(means).all():
        return None
    plt = _pyplot()
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(columns) * len(methods) * 0.45), 3.4))
    x = np.arange(len(columns))
    for i, m in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            100 * np.nan_to_num(means[i]),
            width,
            yerr=100 * np.nan_to_num(stds[i]),
            label=m,
            capsize=2,
        )
    for j, col in enumerate(columns):
        if reference and col in reference:
            ax.hlines(
                100 * reference[col],
                j - 0.45,
                j + 0.45,
                colors="k",
                linestyles="dashed",
                label="full data" if j == 0 else None,
            )
    ax.set_xticks(x, [c.replace(" @ ", "\n@ ").replace(" (", "\n(") for c in columns], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, ncol=min(4, len(methods) + 1), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def loss_curves(series: list[tuple[str, list[float]]]) -> bytes | None:
    """One small panel per method (loss scales differ between methods); log scale when a curve spans > 10x."""
    series = [(name, ys) for name, ys in series if ys]
    if not series:
        return None
    plt = _pyplot()
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, ys) in zip(axes.flat, series, strict=False):
        y = np.asarray(ys, dtype=float)
        ax.plot(np.arange(1, len(y) + 1), y, lw=1)
        finite = y[np.isfinite(y)]
        if len(finite) and finite.min() > 0 and finite.max() > 10 * finite.min():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("loss", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def cost_bars(rows: list[tuple[str, dict]]) -> bytes | None:
    """Left: seconds per phase (stacked, one bar per method). Right: peak memory (RSS, and CUDA when recorded)."""
    rows = [(name, phases) for name, phases in rows if phases]
    if not rows:
        return None
    plt = _pyplot()
    names = [n for n, _ in rows]
    # Phase names in run order, from the runs with the most phases first (e.g. those with a statistics pass).
    phase_names = list(dict.fromkeys(p for _, phases in sorted(rows, key=lambda r: -len(r[1])) for p in phases))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 0.5 + 0.42 * len(rows) + 1.2))
    y = np.arange(len(rows))
    start = np.zeros(len(rows))
    for p in phase_names:
        secs = np.array([phases.get(p, {}).get("seconds", 0.0) or 0.0 for _, phases in rows])
        left.barh(y, secs, left=start, label=p)
        start += secs
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("seconds")
    left.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(phase_names), frameon=False)
    left.grid(axis="x", alpha=0.3)
    rss = np.array([max((v.get("peak_rss_mb") or 0.0) for v in phases.values()) for _, phases in rows])
    cuda = np.array([max((v.get("peak_cuda_mb") or 0.0) for v in phases.values()) for _, phases in rows])
    h = 0.4 if cuda.any() else 0.8
    right.barh(y - (h / 2 if cuda.any() else 0), rss, h, label="peak RSS (process)")
    if cuda.any():
        right.barh(y + h / 2, cuda, h, label="peak CUDA (phase)")
    right.set_yticks(y, names, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("MB")
    right.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)

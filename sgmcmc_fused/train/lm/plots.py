"""Plots of training runs (matplotlib with the Agg backend: files only, no display needed)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any


def plot_lm_runs(
    path: str | os.PathLike,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    floors: Mapping[str, float] | None = None,
    title: str = "",
) -> bool:
    """Perplexity against epochs (left) and against the number of samples averaged (right), per method.

    Args:
        histories: method -> epoch rows with ``epoch``, ``train_ppl``, ``valid_ppl`` and optionally
            ``valid_avg_ppl``.
        curves: method -> one row per collected sample with ``sample`` (samples averaged so far),
            ``valid_avg_ppl``, ``test_avg_ppl``.
        floors: split ("valid", "test") -> a perplexity drawn as a horizontal line (the source's
            Bayes-optimal perplexity of that split), under the curves of that split.
    Returns:
        False (with a warning) if matplotlib is not installed, True once the PNG is written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot (pip install matplotlib)", stacklevel=2)
        return False
    fig, (ax_e, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, rows) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        ax_e.plot(epochs, [r["train_ppl"] for r in rows], ":", color=c, label=f"{method} train")
        ax_e.plot(epochs, [r["valid_ppl"] for r in rows], "-o", ms=3, color=c, label=f"{method} valid")
        avg = [(r["epoch"], r["valid_avg_ppl"]) for r in rows if r.get("valid_avg_ppl") is not None]
        if avg:
            ax_e.plot(*zip(*avg, strict=True), "--s", ms=3, color=c, label=f"{method} valid, model average")
        curve = curves.get(method) or []
        if curve:
            n = [r["sample"] for r in curve]
            ax_s.plot(n, [r["test_avg_ppl"] for r in curve], "-", color=c, label=f"{method} test")
            ax_s.plot(n, [r["valid_avg_ppl"] for r in curve], "--", color=c, label=f"{method} valid")
    floors = floors or {}
    for ax, splits in ((ax_e, ("valid",)), (ax_s, ("test", "valid"))):  # the splits each panel draws
        for split, style in zip(splits, ("-.", ":"), strict=False):
            if split in floors:
                ax.axhline(floors[split], color="k", lw=0.8, ls=style, label=f"Bayes-optimal, {split} (source)")
        ax.set_ylabel("perplexity")
        ax.grid(alpha=0.3)
    ax_e.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 80, 90, 100 rather than 8x10^1
    ax_e.yaxis.set_major_formatter(plain)
    ax_e.yaxis.set_minor_formatter(plain)
    ax_e.tick_params(axis="y", which="minor", labelsize=7)
    ax_e.set_xlabel("epoch")
    ax_e.set_title("per epoch (last weights and model average)")
    ax_s.set_xlabel("samples averaged")
    ax_s.set_title("model average vs number of samples")
    ax_e.legend(fontsize=7)
    if ax_s.has_data():
        ax_s.legend(fontsize=7)
    else:
        ax_s.text(0.5, 0.5, "no samples collected", ha="center", va="center", transform=ax_s.transAxes)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

"""The caption run's plot (matplotlib, Agg backend: files only)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any


def plot_caption_runs(
    path: str | os.PathLike,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    title: str = "",
) -> None:
    """Validation CIDEr-D per epoch (left), validation perplexity per epoch (middle) and against the
    number of samples averaged (right), per method.

    Args:
        histories: method -> epoch rows (`trainer.EPOCH_COLUMNS`).
        curves: method -> one row per collected sample (`trainer.SAMPLE_COLUMNS`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_p, ax_s) = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, rows) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        ax_c.plot(epochs, [100 * r["valid_cider"] for r in rows], "-o", ms=3, color=c, label=method)
        ax_p.plot(epochs, [r["valid_ppl"] for r in rows], "-o", ms=3, color=c, label=f"{method} last weights")
        avg = [(r["epoch"], r["valid_avg_ppl"]) for r in rows if r.get("valid_avg_ppl") is not None]
        if avg:
            ax_p.plot(*zip(*avg, strict=True), "--s", ms=3, color=c, label=f"{method} model average")
        curve = curves.get(method) or []
        if curve:
            n = [r["sample"] for r in curve]
            ax_s.plot(n, [r["valid_avg_ppl"] for r in curve], "-", color=c, label=f"{method} model average")
            ax_s.plot(n, [r["valid_ppl"] for r in curve], ":", color=c, label=f"{method} each sample")
    ax_c.set(xlabel="epoch", ylabel="CIDEr-D x100", title="validation captions (kept samples' average)")
    ax_p.set(xlabel="epoch", ylabel="perplexity", title="validation captions, teacher-forced")
    ax_s.set(xlabel="samples averaged", ylabel="perplexity", title="model average vs number of samples")
    for ax in (ax_c, ax_p, ax_s):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

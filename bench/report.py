"""Turns pytest-benchmark JSON files into a Markdown table and a plot.

    python bench/report.py bench/results/cpu.json [more.json ...] [--plot bench/results/psgld_step.png]
        [--csv bench/results/history.csv]

For each group (case x device) every provider's best time is shown with
elements/s, GB/s (20 bytes per element), the fraction of the copy bandwidth
measured in the same run, and its speed-up over the eager loop and over
torch._foreach, taken from the same file (hence the same run).

LSTM training-step rows (bench/bench_lstm.py, extra_info kind="lstm_step") get
their own table: per case, the best and median time, the slowdown against
nn.LSTM (time / nn.LSTM's time), the speed-up over the eager python_loop, and
the memory (saved-for-backward bytes on CPU, peak allocated bytes on CUDA) and
its ratio to nn.LSTM's. --plot writes their bar chart (to `<name>_lstm.png`
when the files also hold pSGLD rows), --csv appends them to `<name>_lstm.csv`
(a schema of its own). Rows of other benchmarks (bench/bench_caption_decode.py) are
left out.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        for bench in data["benchmarks"]:
            info = bench.get("extra_info", {})
            # pSGLD step rows only: they carry the element count (the LSTM rows have a table of
            # their own, the caption decoding rows none).
            if "provider" not in info or "numel" not in info or info.get("kind") == "lstm_step":
                continue
            rows.append(
                dict(
                    file=path.name,
                    group=bench["group"],
                    provider=info["provider"],
                    device=info.get("device", ""),
                    seconds=bench["stats"]["min"],
                    numel=info["numel"],
                    gelem_per_s=info["elements_per_s"] / 1e9,
                    gbytes_per_s=info["gbytes_per_s"],
                    copy_fraction=info["fraction_of_copy_bandwidth"],
                    copy_gbytes_per_s=info["copy_gbytes_per_s"],
                )
            )
    by_run_group = defaultdict(dict)
    for row in rows:
        by_run_group[(row["file"], row["group"])][row["provider"]] = row
    for providers in by_run_group.values():
        for row in providers.values():
            for base in ("eager", "foreach"):
                ref = providers.get(base)
                row[f"vs_{base}"] = ref["seconds"] / row["seconds"] if ref else None
    return rows


def markdown_table(rows: list[dict]) -> str:
    def ratio(x):
        return f"{x:.1f}x" if x is not None else "-"

    lines = [
        "| group | provider | device | best ms | Gelem/s | GB/s | % of copy BW | vs eager | vs foreach |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["group"], r["seconds"])):
        lines.append(
            f"| {r['group']} | {r['provider']} | {r['device']} | {r['seconds'] * 1e3:.2f} | {r['gelem_per_s']:.3f} "
            f"| {r['gbytes_per_s']:.2f} | {100 * r['copy_fraction']:.0f} % | {ratio(r['vs_eager'])} "
            f"| {ratio(r['vs_foreach'])} |"
        )
    copy = {(r["device"], round(r["copy_gbytes_per_s"], 1)) for r in rows}
    lines.append("")
    lines += [f"Copy bandwidth measured in the same run on {d}: {bw} GB/s" for d, bw in sorted(copy)]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        sub = sorted((r for r in rows if r["group"] == group), key=lambda r: r["seconds"])
        ax.bar([r["provider"] for r in sub], [r["gbytes_per_s"] for r in sub], color="tab:blue")
        ax.axhline(sub[0]["copy_gbytes_per_s"], color="tab:red", linestyle="--", label="copy bandwidth")
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_ylabel("GB/s at 20 bytes/element")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def append_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fields = [
        "device",
        "group",
        "provider",
        "seconds",
        "gelem_per_s",
        "gbytes_per_s",
        "copy_fraction",
        "vs_eager",
        "vs_foreach",
    ]
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


# ---- LSTM training-step rows (bench/bench_lstm.py) ----------------------------------------------

LSTM_BASELINE, LSTM_LOOP = "nn_lstm", "python_loop"


def load_lstm_rows(paths: list[Path]) -> list[dict]:
    """Rows of extra_info kind "lstm_step", with ratios against nn_lstm and python_loop of the same file."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        for bench in data["benchmarks"]:
            info = bench.get("extra_info", {})
            if info.get("kind") != "lstm_step":
                continue
            rows.append(
                dict(
                    file=path.name,
                    group=bench["group"],
                    case=info["case"],
                    shape=info.get("shape", ""),
                    provider=info["provider"],
                    device=info.get("device", ""),
                    seconds=bench["stats"]["min"],
                    median_seconds=bench["stats"]["median"],
                    rounds=bench["stats"]["rounds"],
                    memory_metric=info["memory_metric"],
                    memory_bytes=info["memory_bytes"],
                    memory_step_metric=info.get("memory_step_metric", ""),
                    memory_step_bytes=info.get("memory_step_bytes"),
                )
            )
    by_run_group = defaultdict(dict)
    for row in rows:
        by_run_group[(row["file"], row["group"])][row["provider"]] = row
    for providers in by_run_group.values():
        base, loop = providers.get(LSTM_BASELINE), providers.get(LSTM_LOOP)
        for row in providers.values():
            row["vs_nn_lstm"] = row["seconds"] / base["seconds"] if base else None
            row["speedup_vs_loop"] = loop["seconds"] / row["seconds"] if loop else None
            row["memory_vs_nn_lstm"] = row["memory_bytes"] / base["memory_bytes"] if base else None
            step, base_step = row["memory_step_bytes"], base and base["memory_step_bytes"]
            row["step_memory_vs_nn_lstm"] = step / base_step if step is not None and base_step else None
    return rows


def lstm_markdown_table(rows: list[dict]) -> str:
    def ratio(x, digits=2):
        return f"{x:.{digits}f}x" if x is not None else "-"

    def mb(x):
        return f"{x / 2**20:.1f}" if x is not None else "-"

    metrics = sorted({(r["memory_metric"], r["memory_step_metric"]) for r in rows})
    lines = [
        "| group | shape | provider | best ms | median ms | vs nn.LSTM (slowdown) | speed-up over python_loop "
        "| memory MiB | memory vs nn.LSTM | step memory MiB | step memory vs nn.LSTM |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["group"], r["seconds"])):
        lines.append(
            f"| {r['group']} | {r['shape']} | {r['provider']} | {r['seconds'] * 1e3:.1f} "
            f"| {r['median_seconds'] * 1e3:.1f} | {ratio(r['vs_nn_lstm'])} | {ratio(r['speedup_vs_loop'], 1)} "
            f"| {mb(r['memory_bytes'])} | {ratio(r['memory_vs_nn_lstm'])} | {mb(r['memory_step_bytes'])} "
            f"| {ratio(r['step_memory_vs_nn_lstm'])} |"
        )
    lines.append("")
    lines += [f"memory = {m}; step memory = {s}" for m, s in metrics]
    lines += [f"Device: {d}" for d in sorted({r["device"] for r in rows})]
    return "\n".join(lines)


def plot_lstm(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=False):
        sub = sorted((r for r in rows if r["group"] == group), key=lambda r: r["seconds"])
        colors = ["tab:red" if r["provider"] == LSTM_BASELINE else "tab:blue" for r in sub]
        ax.bar([r["provider"] for r in sub], [r["seconds"] * 1e3 for r in sub], color=colors)
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_ylabel("ms per forward + backward (best)")
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def append_lstm_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fields = [
        "device", "group", "shape", "provider", "seconds", "median_seconds", "vs_nn_lstm", "speedup_vs_loop",
        "memory_metric", "memory_bytes", "memory_vs_nn_lstm", "memory_step_metric", "memory_step_bytes",
    ]  # fmt: skip
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _lstm_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_lstm{path.suffix}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) here")
    parser.add_argument("--csv", type=Path, help="append the rows to this CSV (keyed by device)")
    args = parser.parse_args(argv)
    rows = load_rows(args.json)
    lstm_rows = load_lstm_rows(args.json)
    if not rows and not lstm_rows:
        raise SystemExit("no sgmcmc_fused benchmark rows in " + ", ".join(map(str, args.json)))
    if rows:
        print(markdown_table(rows))
        if args.plot:
            plot(rows, args.plot)
        if args.csv:
            append_csv(rows, args.csv)
    if lstm_rows:
        if rows:
            print()
        print(lstm_markdown_table(lstm_rows))
        if args.plot:
            plot_lstm(lstm_rows, _lstm_path(args.plot) if rows else args.plot)
        if args.csv:
            append_lstm_csv(lstm_rows, _lstm_path(args.csv))


if __name__ == "__main__":
    main()

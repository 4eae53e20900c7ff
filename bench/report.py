"""Turns pytest-benchmark JSON files into a Markdown table and a plot.

    python bench/report.py bench/results/cpu.json [more.json ...] [--plot bench/results/psgld_step.png]
        [--csv bench/results/history.csv]

For each group (case x device) every provider's best time is shown with
elements/s, GB/s (20 bytes per element), the fraction of the copy bandwidth
measured in the same run, and its speed-up over the eager loop and over
torch._foreach, taken from the same file (hence the same run).
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
            if "provider" not in info:
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
    for ax, group in zip(axes[0], groups):
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
    fields = ["device", "group", "provider", "seconds", "gelem_per_s", "gbytes_per_s", "copy_fraction", "vs_eager", "vs_foreach"]
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG) here")
    parser.add_argument("--csv", type=Path, help="append the rows to this CSV (keyed by device)")
    args = parser.parse_args(argv)
    rows = load_rows(args.json)
    if not rows:
        raise SystemExit("no sgmcmc_fused benchmark rows in " + ", ".join(map(str, args.json)))
    print(markdown_table(rows))
    if args.plot:
        plot(rows, args.plot)
    if args.csv:
        append_csv(rows, args.csv)


if __name__ == "__main__":
    main()

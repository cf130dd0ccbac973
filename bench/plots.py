"""Plots the benchmarks draw of their own results, as PNG files next to bench/RESULTS.md.

Each function takes the numbers a scenario measured (its JSON result) and writes one chart; a
result that is missing leaves its chart out rather than drawing a made-up one. matplotlib's Agg
backend draws without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def time_against_baselines(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Bars per scenario: the job's seconds next to cp -r (and rsync -a) of the same files,
    with the job's ratio to cp written over its bar."""
    by = {r.get("bench"): r for r in results}
    groups: list[tuple[str, dict[str, float]]] = []
    if (b := by.get("bulk")) and b.get("cp_seconds"):
        bars = {"replication job": b["seconds"], "cp -r": b["cp_seconds"]}
        if b.get("rsync_seconds"):
            bars["rsync -a"] = b["rsync_seconds"]
        groups.append((f"bulk\n{b['bytes'] / 2**30:.2f} GiB, {b['files']} files", bars))
    if (s := by.get("small")) and s.get("cp_seconds"):
        groups.append(
            (
                f"small tablets\n{s['tablets']:,} x {s['avg_file_kib']} KiB",
                {"replication job": s["seconds"], "cp -r": s["cp_seconds"]},
            )
        )
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    colours = {"replication job": "#3b6ea5", "cp -r": "#999999", "rsync -a": "#c98b2b"}
    for ax, (title, bars) in zip(axes[0], groups, strict=True):
        names = list(bars)
        drawn = ax.bar(names, [bars[n] for n in names], color=[colours[n] for n in names])
        ratio = bars["replication job"] / bars["cp -r"]
        ax.bar_label(drawn, labels=[f"{bars[n]:.2f} s" for n in names], padding=2, fontsize=8)
        ax.set_title(f"{title}\njob = {ratio:.2f}x cp -r", fontsize=9)
        ax.set_ylabel("seconds")
        ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def concurrency_curve(result: dict[str, Any] | None, path: Path) -> Path | None:
    """Jobs submitted and jobs committed against seconds since the first submit."""
    if not result or not result.get("commit_seconds"):
        return None
    committed = sorted(result["commit_seconds"])
    submitted = sorted(result.get("submitted_seconds") or [])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if submitted:
        ax.step(submitted, range(1, len(submitted) + 1), where="post", label="submitted")
    ax.step(committed, range(1, len(committed) + 1), where="post", label="committed")
    ax.set_xlabel("seconds since the first submit")
    ax.set_ylabel("jobs")
    ax.set_title(
        f"{result['jobs']} concurrent one-table jobs: all committed in {result['seconds']:.1f} s",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_against_processes(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """MB/s of the same job against apply processes per target queue (bench.scaling)."""
    if not rows:
        return None
    xs = [r["processes"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.plot(xs, [r["mb_per_s"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['mb_per_s']:.0f}", (r["processes"], r["mb_per_s"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xlabel("worker processes per target backend queue")
    ax.set_ylabel("MB/s (submit -> COMMITTED)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

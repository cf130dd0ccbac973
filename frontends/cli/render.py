"""Formatting shared by the commands."""

from __future__ import annotations

from typing import Any

from app.units import fmt_bytes

size = fmt_bytes


def duration(sec: float) -> str:
    sec = max(int(sec), 0)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(job: Any) -> str:
    p = job.progress
    return (
        f"{job.ref} {job.state}: snapshots {p.snapshots_done}/{p.snapshots_total}, "
        f"replicas {p.tablets_done}/{p.tablets_total}, bytes {p.bytes_done}/{p.bytes_total}"
    )

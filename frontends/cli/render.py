"""Formatting shared by the commands."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from app.units import fmt_bytes

size = fmt_bytes


def safe(value: object) -> str:
    """Text from a user or a catalog row, fit to print with rich: its markup escaped (a label
    ``[/]`` would otherwise break the whole listing) and control characters written as Python
    escapes (an escape sequence in a name would otherwise reach the terminal)."""
    text = "" if value is None else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escape(text)


def duration(sec: float) -> str:
    sec = max(int(sec), 0)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(job: Any) -> str:
    p = job.progress
    return (
        f"{safe(job.ref)} {job.state}: snapshots {p.snapshots_done}/{p.snapshots_total}, "
        f"replicas {p.tablets_done}/{p.tablets_total}, bytes {p.bytes_done}/{p.bytes_total}"
    )

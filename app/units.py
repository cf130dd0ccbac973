"""Units, spelled once. Every "MB" in this project — settings such as
``replication_max_parallel_data_size_mb`` and ``transfer_bandwidth_mb_per_sec`` (named after
StarRocks, where MB means 2^20 bytes), progress lines, benchmark tables — is a mebibyte."""

from __future__ import annotations

MB = 1024 * 1024


def mb(n_bytes: float) -> float:
    return n_bytes / MB


def fmt_bytes(n: float) -> str:
    """A human size in powers of 1024: ``512 B``, ``3.2 KB``, ``122.4 MB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"

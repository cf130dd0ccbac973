"""Rowset files on backends: storage clients, checksums, loads, compaction, GC and holds."""

"""Backups and restores (README "Backup and restore").

A backup is a job of the cluster it backs up, moved by the replication coordinator through the
same states, task rows and per-backend queues (flow.py, upload.py); a restore is a replication
job whose source is the repository, seen as a cluster (view.py). The repository holds
content-addressed objects and one manifest per backup (repo.py, manifest.py).
"""

"""The one-command demo: ``make demo`` (``python -m frontends.demo``) and ``make demo-down``.

What it does, end to end, on one machine:

1. resets two clusters, ``prod`` and ``dr``, with three backends each under ``var/demo/<cluster>/``
   (a previous demo's catalogs, storage and processes are removed first);
2. generates TPC-H ``lineitem`` with tpchgen-cli and loads most of it into ``prod:tpch.lineitem``
   (4 range partitions on ``l_shipdate`` x 12 hash buckets, ``replication_num`` 2);
3. starts one Celery worker per backend queue, the coordinator with its beat tick, and Flower,
   as detached processes (``frontends/supervise.py``; logs in ``var/demo/logs/``, pids in
   ``var/demo/pids/``);
4. replicates ``prod:tpch.lineitem`` to ``dr`` (a full copy), with a live progress bar;
5. loads the rest of the data into ``prod`` and replicates again: only the new rowsets travel;
6. checks that both clusters hold the same data (per partition: rows, checksum, version, epoch);
7. copies ``dr``'s table into a third cluster, ``lake``, whose backends are in object storage
   (frontends/demo/lake.py);
8. backs ``dr``'s table up into the same store and restores one partition of it into a new table
   of ``dr``, which must equal that partition (frontends/demo/backup.py);
9. prints a summary. The workers and Flower keep running until ``make demo-down``.

Settings come from ``load_settings()`` (``replicator.toml`` / ``REPLICATOR_*``); the workers inherit
the same environment. ``DEMO_SCALE_FACTOR`` changes the size of the data (default 0.3).
"""

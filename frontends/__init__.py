"""The front ends over the library: the ``replicator`` command line, the demo, the metrics
exporter, and what they share (the process supervisor, TPC-H data, a wired Replicator).

``app`` knows nothing of these, nor of Celery; front ends may use both ``app`` and ``workers``.
"""

"""olap-replicator: transactional replication of versioned, tablet-based OLAP tables.

The public surface is small: :class:`app.client.Replicator` and the errors in :mod:`app.errors`.
Everything else is an implementation module.
"""

__version__ = "0.1.0"

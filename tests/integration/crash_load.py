"""Start a load, write its rowset files, then die by SIGKILL before the commit.

    python tests/integration/crash_load.py CLUSTER DB.TABLE INPUT_FILE LABEL

Settings come from the environment (``REPLICATOR_DSN_TEMPLATE``,
``REPLICATOR_LOAD_TRANSACTION_TIMEOUT_SEC``, ...). Before dying it prints one JSON line with the
transaction id, its timeout and the staged row count, so the test can find what was left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from app import txn as txns
from app.catalog import model
from app.storage.load import Loader
from frontends.connect import replicator


def main(cluster_name: str, full_name: str, path: str, label: str) -> None:
    cluster = replicator().cluster(cluster_name).catalog
    loader = Loader(cluster)
    with cluster.engine.connect() as conn:
        table = model.get_table(conn, full_name, cluster.name)
    timeout = cluster.settings.load_transaction_timeout_sec
    with cluster.engine.begin() as conn:
        txn = txns.begin(conn, table, label=label, kind="LOAD", timeout_sec=timeout)
    staged = loader.stage(table, txn.id, path, None)
    print(
        json.dumps(
            {
                "txn_id": txn.id,
                "timeout_sec": timeout,
                "rows": staged.checksum.rows,
                "files": staged.files,
            }
        ),
        flush=True,
    )
    os.kill(os.getpid(), signal.SIGKILL)  # between file write and commit
    raise SystemExit("unreachable: the process should be dead")


if __name__ == "__main__":
    main(*sys.argv[1:5])

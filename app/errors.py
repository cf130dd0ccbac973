"""One error hierarchy.

Every error says whether retrying can help (``retryable``). ``UserError`` is a mistake in what the
user asked for: the CLI prints its message on one line, without a traceback, and exits non-zero.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error this package raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(ReplicatorError):
    """The request is wrong; the message says what and how to fix it. Never retried."""


class NotFound(UserError):
    """A named cluster, backend, table, partition, job or label does not exist."""


class AlreadyExists(UserError):
    """Something with that name exists already."""


class InvalidRequest(UserError):
    """Arguments that cannot be acted on (bad type, bad range, too few backends, ...)."""


class SchemaMismatch(UserError):
    """Data or a target table does not match the expected schema."""


class RowsOutsidePartitions(UserError):
    """Rows whose partition key falls in no partition of the table."""


class LabelConflict(UserError):
    """A label was reused with different data or arguments."""


class TableBusy(UserError):
    """The table has an open replication transaction and refuses the operation."""


class VersionConflict(UserError):
    """Versions do not allow the operation (e.g. target ahead of source)."""


class RetryableError(ReplicatorError):
    """A transient failure: the same call may succeed later."""

    retryable = True


class AdmissionRefused(RetryableError):
    """A parallelism limit is reached; submit again when running jobs have finished."""


class StorageUnavailable(RetryableError):
    """A backend's storage root cannot be reached right now."""


class TransactionConflict(RetryableError):
    """A concurrent change won a compare-and-set; re-plan and try again."""


class FatalError(ReplicatorError):
    """An unrecoverable failure of a job: it must abort."""


class ChecksumMismatch(FatalError):
    """A transferred or stored file does not match its recorded size or checksum."""

    retryable = True  # another attempt, or another source replica, may deliver good bytes


class CorruptSource(FatalError):
    """Every source replica of a file fails its checksum, again and again: the data is bad."""


class SourceDataGone(FatalError):
    """Files a job needs no longer exist on any source replica."""


class TransactionExpired(FatalError):
    """The transaction passed its timeout and was aborted."""

"""One error hierarchy: the branch an error hangs on says whether retrying can help.

    ReplicatorError
    ├── UserError        the request is wrong; never retried. The CLI prints the message on one
    │                    line, without a traceback, and exits 2.
    ├── RetryableError   transient; the same call may succeed later. The CLI exits 3.
    └── FatalError       retrying the same thing cannot help: the job (or this attempt) ends.

Subclasses never override ``retryable``: a test walks the tree and fails if one does, so the
answer to "retry?" is always read off the branch (as dramatiq's errors do), and ``retryable(exc)``
below is the one place that also classifies errors from outside this package.
"""

from __future__ import annotations

import re

import sqlalchemy as sa


class ReplicatorError(Exception):
    """Root of every error this package raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- the request is wrong ------------------------------------------------------------------


class UserError(ReplicatorError):
    """The request is wrong; the message says what and how to fix it. Never retried."""

    retryable = False


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
    """The versions asked for do not allow the request (e.g. a target ahead of its source)."""


class TokenRejected(InvalidRequest):
    """A transfer token was refused; ``reason`` says why (malformed, unknown_key,
    bad_signature, expired, wrong_cluster). The message never contains the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TargetDiverged(UserError):
    """The target was written on its own since it was last replicated: replicating would
    replace those rows. Refused unless the caller asks for an overwrite."""


class CorruptBackup(UserError):
    """A backup repository holds a manifest that does not parse or check out, or lacks or
    garbles an object a backup needs: ``backup verify`` names what."""


class AccessDenied(UserError):
    """A service refused our credentials (Postgres: a wrong user or password): fix the settings;
    trying again as we are cannot help."""


class SetupError(UserError):
    """The machine is not ready for what was asked (a port taken, a service or tool missing)."""


class BrokerRefused(UserError):
    """The broker answered but will not serve us: a wrong or missing password, or a TLS
    certificate that does not verify. Retrying with the same settings cannot help."""


# -- transient -----------------------------------------------------------------------------


class RetryableError(ReplicatorError):
    """A transient failure: the same call may succeed later."""

    retryable = True


class AdmissionRefused(RetryableError):
    """A parallelism limit is reached; submit again when running jobs have finished."""


class StorageUnavailable(RetryableError):
    """A backend's storage root cannot be reached right now."""


class TransactionConflict(RetryableError):
    """A concurrent change won a compare-and-set; re-plan and try again."""


class ChecksumMismatch(RetryableError):
    """A transferred or stored file does not match its recorded size or checksum. Another
    attempt, or another source replica, may deliver good bytes."""


class BrokerUnavailable(RetryableError):
    """The broker cannot be reached right now (connection refused, timeout)."""


class JobTimeout(RetryableError):
    """``Job.wait`` ran out of time; the job itself goes on."""


# -- retrying cannot help ------------------------------------------------------------------


class FatalError(ReplicatorError):
    """Retrying the same thing cannot help: the job must abort (or the attempt must stop)."""

    retryable = False


class CorruptSource(FatalError):
    """Every source replica of a file fails its checksum, again and again: the data is bad."""


class SourceDataGone(FatalError):
    """Files a job needs no longer exist on any source replica."""


class TransactionExpired(FatalError):
    """The transaction passed its timeout and was aborted."""


class StorageFull(FatalError):
    """A storage root has no room left: retrying will not make room."""


class TargetMoved(FatalError):
    """A target partition changed after planning; committing would lose that change."""


class TransferRefused(FatalError):
    """A source transfer server refused the download (401: the token; 403: this file for it):
    expired, revoked with its job, or not named by it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(FatalError):
    """The transfer server's side of a refusal: ``status`` is its HTTP answer (400, 401, 403,
    404) and ``why`` is safe to log and to send (never a token)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class LeaseLost(FatalError):
    """Another attempt owns the task now, or its job ended: stop without touching the task."""


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: our errors by their branch; connection trouble with
    Postgres or storage is transient by nature; anything else (a bug) is not."""
    if isinstance(exc, ReplicatorError):
        return exc.retryable
    return isinstance(exc, OSError | sa.exc.OperationalError | sa.exc.InterfaceError)


_DSN_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_TOKEN = re.compile(r"v1\.[A-Za-z0-9_-]{16,}(?:\.[A-Za-z0-9_-]*)?")


def redact(text: str) -> str:
    """``text`` without secrets: a URL's password (``postgresql://u:secret@h`` ->
    ``postgresql://u:***@h``) and transfer tokens. Applied to everything the project keeps or
    shows: job messages, events, task errors, CLI errors."""
    return _TOKEN.sub("v1.<redacted>", _DSN_PASSWORD.sub(r"\1:***@", text))

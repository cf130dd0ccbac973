"""Who may read what from a transfer server: every check a request passes before a byte.

1. every path part is validated (:mod:`app.transfer.names`)            -> 400
2. the backend must be one this server was configured with              -> 404
3. the token must verify, for this backend's cluster                    -> 401 (403: wrong cluster)
4. the token must name exactly (tablet, rowset, file)                   -> 403
5. ``revocation_check(grant)`` must say the job's holds still exist     -> 403
6. the path is resolved under the backend's configured root             -> 404 if absent

A batch request (:mod:`app.transfer.batch`) passes the same for each file it names, each token
verified once; there a file absent from this backend is reported as absent, not refused, so
that the client takes it from another replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from app.errors import InvalidRequest, RequestRefused, TokenRejected
from app.transfer import batch, names, tokens
from app.transfer.tokens import Grant


@dataclass(frozen=True)
class BackendRoot:
    cluster: str
    backend: str
    root: Path


class RevocationCheck(Protocol):
    """``True`` while the grant is still good (its job's holds exist). The server calls it in a
    worker thread, so it may block (e.g. a catalog query cached for <= 1 s)."""

    def __call__(self, grant: Grant) -> bool: ...


class InMemoryRevocations:
    """A revocation check for tests and single-process use: revoke by hold owner."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def revoke(self, hold_owner: str) -> None:
        self.revoked.add(hold_owner)

    def __call__(self, grant: Grant) -> bool:
        return grant.hold_owner not in self.revoked


class Access:
    """The checks of one server: its backends, the token secrets, the revocation check."""

    def __init__(
        self,
        backends: Mapping[str, BackendRoot],
        secrets: Mapping[str, bytes],
        revocation_check: RevocationCheck,
        clock: Callable[[], float],
    ) -> None:
        self.backends = dict(backends)
        self.secrets = dict(secrets)
        self.revocation_check = revocation_check
        self.clock = clock

    async def file(self, request: web.Request) -> tuple[Path, Grant]:
        """The one file a GET names (steps 1-6); RequestRefused otherwise."""
        info = request.match_info
        try:
            backend_name = names.backend_name(info["backend"])
            tablet = names.tablet_id(info["tablet"])
            rowset = names.rowset_id(info["rowset"])
            name = names.file_name(info["file"])
        except InvalidRequest as exc:
            raise RequestRefused(400, str(exc)) from None
        backend = self._backend(backend_name)
        grant = self._verify(request, backend)
        if not grant.allows(tablet, rowset, name):
            raise RequestRefused(403, f"job {grant.job_id}'s token does not name this file")
        await self._not_revoked(grant)
        try:
            path = names.resolve_under(backend.root, names.rowset_file(tablet, rowset, name))
        except InvalidRequest as exc:  # a symlink out of the root
            raise RequestRefused(404, str(exc)) from None
        if not path.is_file():
            raise RequestRefused(404, f"job {grant.job_id}: no such file on {backend_name}")
        return path, grant

    async def files(self, request: web.Request) -> tuple[list[Path | None], Grant]:
        """Every file's path a batch names (None: not on this backend), after steps 1-5 for
        each, each token verified once; RequestRefused otherwise."""
        try:
            backend_name = names.backend_name(request.match_info["backend"])
        except InvalidRequest as exc:
            raise RequestRefused(400, str(exc)) from None
        backend = self._backend(backend_name)
        wire_tokens, refs = await _batch_refs(request)
        grants: dict[int, Grant] = {}
        for i, tablet, rowset, name in refs:
            if i not in grants:
                grants[i] = self._verify_token(wire_tokens[i], backend)
            if not grants[i].allows(tablet, rowset, name):
                raise RequestRefused(
                    403, f"job {grants[i].job_id}'s token does not name every file"
                )
        for grant in {(g.job_id, g.hold_owner): g for g in grants.values()}.values():
            await self._not_revoked(grant)
        paths: list[Path | None] = []
        for _i, tablet, rowset, name in refs:
            try:
                paths.append(
                    names.resolve_under(backend.root, names.rowset_file(tablet, rowset, name))
                )
            except InvalidRequest:  # a symlink out of the root: as if absent
                paths.append(None)
        return paths, next(iter(grants.values()))

    def _backend(self, name: str) -> BackendRoot:
        backend = self.backends.get(name)
        if backend is None:
            raise RequestRefused(404, f"no backend {name!r} here")
        return backend

    async def _not_revoked(self, grant: Grant) -> None:
        if not await asyncio.to_thread(self.revocation_check, grant):
            raise RequestRefused(403, f"job {grant.job_id}'s token is revoked (its holds are gone)")

    def _verify(self, request: web.Request, backend: BackendRoot) -> Grant:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise RequestRefused(401, "no bearer token")
        return self._verify_token(token.strip(), backend)

    def _verify_token(self, token: str, backend: BackendRoot) -> Grant:
        try:
            return tokens.verify(
                self.secrets, token, now=self.clock(), source_cluster=backend.cluster
            )
        except TokenRejected as exc:
            raise RequestRefused(403 if exc.reason == "wrong_cluster" else 401, str(exc)) from None


async def _batch_refs(request: web.Request) -> tuple[list[str], list[batch.FileRef]]:
    """The tokens and file references of a batch request's body, validated."""
    if (request.content_length or 0) > batch.MAX_BODY:
        raise RequestRefused(400, f"a batch request's body is limited to {batch.MAX_BODY} bytes")
    try:
        return batch.parse_request(await request.read())  # aiohttp bounds it too (1 MiB)
    except InvalidRequest as exc:
        raise RequestRefused(400, f"bad batch request: {exc}") from None

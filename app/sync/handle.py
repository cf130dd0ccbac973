"""A sync policy as the Python API hands it out: thin calls into app.sync.policies."""

from __future__ import annotations

from app.config import Settings
from app.sync import policies as p
from app.sync.promote import Promotion, promote


class SyncPolicy:
    def __init__(self, settings: Settings, cluster: str, name: str) -> None:
        self.settings, self.cluster, self.name = settings, cluster, name

    def __repr__(self) -> str:
        return f"<SyncPolicy {self.cluster}:{self.name}>"

    def show(self) -> p.Policy:
        """The policy with a row per followed table: state, reason, versions and seconds behind."""
        return p.show(self.settings, self.cluster, self.name)

    def pause(self) -> p.Policy:
        """No new jobs (the tables stay fenced, lag is still measured)."""
        return p.set_state(self.settings, self.cluster, self.name, p.PolicyState.PAUSED)

    def resume(self) -> p.Policy:
        return p.set_state(self.settings, self.cluster, self.name, p.PolicyState.ACTIVE)

    def resync(self, table: str) -> p.Policy:
        """Let a STOPPED table sync again once its cause is dealt with."""
        return p.resync(self.settings, self.cluster, self.name, table)

    def promote(
        self, *, now: bool = False, reverse: bool = False, timeout: float = 300.0
    ) -> Promotion:
        """Make the target the writable copy (app/sync/promote.py): once caught up, or at once
        with ``now`` (reporting what was not copied); ``reverse`` leaves a paused policy the
        other way round, for a failback that copies only what changed."""
        return promote(
            self.settings, self.cluster, self.name, now=now, reverse=reverse, timeout=timeout
        )

    def drop(self) -> None:
        """Forget the policy; its tables are writable again and keep what they hold."""
        p.drop(self.settings, self.cluster, self.name)

"""Replication jobs: plan, the pure state machine, the coordinator's actions, and task work."""

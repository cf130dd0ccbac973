"""Continuous sync: policies that keep a source database's tables in sync with a target."""

"""``python -m frontends.cli``."""

from frontends.cli import main

main()

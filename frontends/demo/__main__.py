"""``python -m frontends.demo`` (``make demo``) and ``python -m frontends.demo --down``."""

import sys

from frontends.demo.main import main

sys.exit(main())

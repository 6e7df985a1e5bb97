"""``python -m retention`` runs the same command line as the ``retention`` script."""

from __future__ import annotations

import sys

from retention.cli import main

sys.exit(main())

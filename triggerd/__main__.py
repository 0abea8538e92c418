"""``python -m triggerd``: the same command as the ``triggerd`` console script.

Only forwards to :func:`triggerd.cli.main`; it must never hold logic of its own.
"""

from __future__ import annotations

import sys

from triggerd.cli import main

if __name__ == "__main__":
    sys.exit(main())

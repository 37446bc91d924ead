"""``python -m dqlray`` is the ``dqlray`` command."""

import sys

from dqlray.cli import main

sys.exit(main())

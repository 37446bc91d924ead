"""``python -m dqlray.notify {test,relay}``."""

import sys

from dqlray.notify.cli import main

sys.exit(main())

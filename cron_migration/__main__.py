"""``python -m cron_migration plan module:attribute [--check]`` | ``audit PATH``."""

import sys

from ._cli import main

sys.exit(main())

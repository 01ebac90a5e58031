"""``python -m edgecap``: the same as the ``edgecap`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m edgecap.cli``: the same as the ``edgecap`` command."""

import sys

from . import main

sys.exit(main())

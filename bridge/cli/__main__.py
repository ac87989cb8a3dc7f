"""``python -m bridge.cli``: the ``evbridge`` command without the console script."""

import sys

from bridge.cli import main

sys.exit(main())

"""``python -m intbert.cli``: the ``intbert`` command without the console script (e.g. under torchrun)."""

import sys

from .main import main

sys.exit(main())

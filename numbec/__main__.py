"""``python -m numbec``: the ``numbec`` command line."""

import sys

from numbec.cli import main

sys.exit(main())

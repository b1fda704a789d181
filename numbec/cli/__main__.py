import sys

from numbec.cli import main

sys.exit(main())

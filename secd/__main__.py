"""`python -m secd` is the `secd` command."""

import sys

from secd.cli import main

sys.exit(main())

"""`python -m msfollowup.cli`: the command line (see msfollowup.cli)."""

import sys

from msfollowup.cli import main

sys.exit(main())

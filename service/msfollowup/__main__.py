import sys

from msfollowup.cli import main

sys.exit(main())

"""`python3 -m chat`: see chat/cli.py."""

import sys

from .cli import main

sys.exit(main())

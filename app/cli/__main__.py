"""`python -m app.cli`: the flightlog command."""

import sys

from app.cli import main

sys.exit(main())

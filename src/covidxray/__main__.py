"""``python -m covidxray``: the command-line tool."""

import sys

from covidxray.cli import main

sys.exit(main())

"""``python -m rpuhw.cli ARGS`` = ``rpuhw ARGS``."""

import sys

from rpuhw.cli import main

sys.exit(main())

"""``python -m rpuhw.drivers.emulators`` = ``rpuhw emulate``."""

import sys

from rpuhw.drivers.emulators.cli import main

sys.exit(main())

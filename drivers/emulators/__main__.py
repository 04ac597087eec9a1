"""``python -m rpuhw.drivers.emulators ARGS`` = ``rpuhw emulate ARGS``."""

import sys

from rpuhw.cli import main

sys.exit(main(["emulate", *sys.argv[1:]]))

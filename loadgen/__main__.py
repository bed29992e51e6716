"""``python -m loadgen`` (the same as ``python -m chat loadgen``)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))

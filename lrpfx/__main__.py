"""``python -m lrpfx``: the ``lrpfx`` command line (see :mod:`lrpfx.cli`)."""

import sys

from lrpfx.cli import main

if __name__ == "__main__":
    sys.exit(main())

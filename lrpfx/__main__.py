"""``python -m lrpfx``: the ``lrpfx`` command line (see :mod:`lrpfx.apps.cli`)."""

import sys

from lrpfx.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m triton_playground COMMAND [ARGS]``: the ``triton-playground`` command line (``cli.py``)."""

import sys

from triton_playground.cli import main

sys.exit(main())

"""``python -m ravine`` (and ``torchrun -m ravine``) runs the command-line interface."""

import sys

from ravine.commands import main

sys.exit(main())

"""`python -m chimera ...` runs the `chimera` command (so `torchrun -m chimera train-lm ...` works)."""

import sys

from chimera.cli import main

sys.exit(main())

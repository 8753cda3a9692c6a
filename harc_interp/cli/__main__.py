"""`python -m harc_interp.cli`: the same as the `harc` command."""

import sys

from . import main

sys.exit(main())

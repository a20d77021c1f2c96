"""``python -m svdlora_pl.cli``: the ``svdlora`` command."""

import sys

from svdlora_pl.cli.main import main

sys.exit(main())

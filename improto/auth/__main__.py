"""``python -m improto.auth``: the same as ``improto-token``."""

import sys

from improto.auth.mint import main

sys.exit(main())

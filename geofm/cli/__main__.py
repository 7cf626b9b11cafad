"""``python -m geofm.cli``: the ``geofm`` command."""

import sys

from geofm.cli import main

sys.exit(main())

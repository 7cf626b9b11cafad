"""``python -m geofm``: the ``geofm`` command."""

import sys

from geofm.cli import main

sys.exit(main())

"""``python -m gateway.comms``: see :mod:`gateway.comms.process`."""

import sys

from gateway.comms.process import main

sys.exit(main())

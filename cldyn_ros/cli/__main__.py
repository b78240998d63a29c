"""``python -m cldyn_ros.cli`` runs the ``cldyn`` command."""

import sys

from . import main

sys.exit(main())

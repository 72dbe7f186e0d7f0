"""``python -m pyqga.agent.keeper``: the keeper process (see :mod:`pyqga.agent.keeper.main`)."""

import sys

from pyqga.agent.keeper.main import main

sys.exit(main())

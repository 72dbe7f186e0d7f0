import sys

from pyqga.agent.keeper.main import main

sys.exit(main())

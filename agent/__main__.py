import sys

from pyqga.agent.main import main

sys.exit(main())

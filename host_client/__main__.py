import sys

from pyqga.host_client.cli import main

sys.exit(main())

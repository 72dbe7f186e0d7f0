import sys

from host_client.cli import main

sys.exit(main())

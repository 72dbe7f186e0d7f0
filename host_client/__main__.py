import sys

try:
    from pyqga.host_client.cli import main
except KeyboardInterrupt:  # Ctrl-C while starting: still one line and 130
    print("pyqga: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

"""Who builds the .deb in the tests: its Maintainer, from DEBFULLNAME and DEBEMAIL as
``packaging/build_dist.py`` takes them.  A test build is never shipped, so the documentation
domain is the true address here."""

import os

BUILDER = {"DEBFULLNAME": "pyqga test build", "DEBEMAIL": "pyqga-tests@example.org"}


def builder_env(**extra: str) -> dict[str, str]:
    """This environment without any DEBFULLNAME/DEBEMAIL of the caller's, with ``extra`` over it."""
    return {**{k: v for k, v in os.environ.items() if k not in BUILDER}, **extra}

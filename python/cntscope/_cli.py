"""The ``cntscope`` command installed with the package: the Rust binary's
command line, run in this process."""

import sys

from . import _native


def main() -> None:
    """Runs ``cntscope`` on ``sys.argv`` and exits with its exit code."""
    sys.exit(_native.main(["cntscope", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

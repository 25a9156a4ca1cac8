"""`python -m deepscope.cli` and the `deepscope` script: the command line lives in deepscope.commands."""
import sys

from deepscope.commands import build_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())

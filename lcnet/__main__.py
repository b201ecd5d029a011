"""``python -m lcnet``: the same command line as the ``lcnet`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m radforge``: the same as the ``radforge`` command."""

from radforge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

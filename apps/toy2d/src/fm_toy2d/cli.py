"""Command-line entry point (filled in by the app's issue)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("not built yet", file=sys.stderr)
    return 1

"""`python -m hetq.search.worker`: one search worker process (what `hetq search --workers N`
starts locally, and what `hetq worker` runs on another machine)."""

from __future__ import annotations

import argparse
import sys

from .driver import run_worker_process


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        run_worker_process(a.out, a.study, a.storage, progress=not a.quiet)
    except ValueError as e:
        print(f"hetq worker: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m hetq.search.worker`: one search worker process (what `hetq search --workers N`
starts locally, and what `hetq worker` runs on another machine)."""

from __future__ import annotations

import argparse
import sys

from .driver import run_worker_process
from .engine import SearchFailed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hetq.search.worker",
        description="One search worker process: what `hetq search --workers N` starts "
                    "locally, and what `hetq worker` runs on another machine.")
    p.add_argument("--study", required=True, help="name of the study to join (hetq search "
                                                   "--study)")
    p.add_argument("--storage", default=None,
                   help="the search's database URL (default: the journal file in --out)")
    p.add_argument("--out", default=None,
                   help="run folder: the journal and trial checkpoints (default runs/STUDY)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        run_worker_process(a.out, a.study, a.storage, progress=not a.quiet)
    except (ValueError, SearchFailed) as e:
        print(f"hetq worker: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

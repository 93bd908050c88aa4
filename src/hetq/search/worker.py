"""`python -m hetq.search.worker`: one search worker process, what `hetq search --workers N`
starts locally. It is `hetq worker` (same options, messages and exit codes), runnable without
the `hetq` script on the PATH."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import os

    from hetq.cli import die_with_parent
    from hetq.cli import main as hetq_main

    if os.environ.get("HETQ_PARENT_PID", "").isdigit():  # (started by `hetq search`)
        die_with_parent(int(os.environ["HETQ_PARENT_PID"]))
    return hetq_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""`python -m hetq`: the `hetq` command."""

from hetq.cli import main

raise SystemExit(main())

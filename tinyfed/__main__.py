"""``python -m tinyfed ...``: the same as the ``tinyfed`` script."""

from .cli import main

raise SystemExit(main())

"""``python -m fwproxy``."""

from .cli import main

raise SystemExit(main())

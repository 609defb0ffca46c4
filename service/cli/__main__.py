"""``python -m service.cli``: the ``chime-broker`` command."""

from service.cli import main

raise SystemExit(main())

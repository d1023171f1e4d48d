"""``python -m ser_modules.upstreams check --upstream PATH [--upstream-arch A] ...`` (:mod:`ser_modules.upstreams.cli`)."""

from ser_modules.upstreams.cli import main

raise SystemExit(main())

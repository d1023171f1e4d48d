"""``python -m ser_modules.benchmark ...`` (:mod:`ser_modules.benchmark.run`)."""

import sys

from ser_modules.benchmark.run import main

sys.exit(main())

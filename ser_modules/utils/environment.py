"""What a result was computed with: date, Python and library versions, platform, git commit.

Written beside every table (``RESULTS.md``, the benchmark) and into every exported model's card.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone


def environment() -> dict:
    """Date, Python, library versions and the toolkit's git commit (``-dirty`` with local changes)."""
    import speechbrain
    import torch

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "speechbrain": speechbrain.__version__, "platform": platform.platform(),
            "git_commit": commit}

"""The harness is backend-neutral: importing it must not pull in a framework or matplotlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_harness_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import rescompile.harness\n"
        "from rescompile.harness import checkpoint, data, metrics, plots, safepickle, schedules\n"
        "from rescompile.harness import evaluate, images, init, shards\n"
        "heavy = ('torch', 'jax', 'flax', 'matplotlib', 'sklearn')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""

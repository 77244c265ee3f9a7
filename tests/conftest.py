from __future__ import annotations

from pathlib import Path

import pytest
from spec_cases import ROOT, SPECS, spec_id  # noqa: F401  (imported by the top-level tests)


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to a file in tmp_path and return its path."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    return _write

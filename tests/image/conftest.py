from __future__ import annotations

from pathlib import Path

import pytest
from imagefixtures import her2st_root


@pytest.fixture
def real_root() -> Path:
    root = her2st_root()
    if root is None:
        pytest.skip("HER2ST data not found (set GR2ST_DATA or provide ../shared/data/her2st)")
    return root

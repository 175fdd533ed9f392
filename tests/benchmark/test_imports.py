from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_light_helpers_do_not_import_the_fold_loop() -> None:
    # Methods and models import gr2st.benchmark.data/overrides; pulling in the fold loop
    # (and with it every method) from there would be an import cycle.
    code = (
        "import sys, gr2st.benchmark.data, gr2st.benchmark.overrides\n"
        "loaded = [m for m in ('gr2st.benchmark.runner', 'gr2st.methods') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from gr2st.benchmark import run_benchmark\n"
        "assert callable(run_benchmark)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

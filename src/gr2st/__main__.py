"""``python -m gr2st``: the same command line as ``gr2st``."""

from __future__ import annotations

from gr2st.cli.main import main

if __name__ == "__main__":
    main()

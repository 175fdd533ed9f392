"""Fail if a ``pip install --dry-run --report -`` JSON report (on stdin) touches torch.

CI pipes the report of installing the built wheel into a venv that already holds torch:
the wheel's ranges must accept that torch, so pip plans no torch, triton or nvidia-*
(CUDA) package. Prints what pip would install instead.

Example::

    pip install --dry-run --quiet --report - dist/gr2st-*.whl \
        | python scripts/check_no_torch_action.py
"""

from __future__ import annotations

import json
import re
import sys


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    report = json.load(sys.stdin)
    planned = [
        (_canonical(item["metadata"]["name"]), item["metadata"]["version"])
        for item in report.get("install", [])
    ]
    touched = [
        f"{name}=={version}"
        for name, version in planned
        if name in ("torch", "triton") or name.startswith("nvidia-")
    ]
    print(f"pip {report.get('pip_version', '?')} dry run: {len(planned)} package(s) to install:")
    print("  " + ", ".join(f"{name}=={version}" for name, version in sorted(planned)))
    if touched:
        raise SystemExit(f"FAILED: the wheel would change torch: {', '.join(touched)}")
    print("torch action: none (the installed torch satisfies gr2st's range)")


if __name__ == "__main__":
    main()

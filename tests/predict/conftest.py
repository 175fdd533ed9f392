from __future__ import annotations

from predictfixtures import trained

__all__ = ["trained"]

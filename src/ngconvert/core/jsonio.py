"""The one JSON writer for every file ngconvert writes (stable bytes)."""
from __future__ import annotations

import json


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()

"""Server-made ids: opaque, prefixed by what they name (wtx_…, gtx_…, wd_…), unique without coordination."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"

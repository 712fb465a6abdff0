"""Recovery passes: work a crash or an outage left pending (a purchase, a gift) is resumed through the same
idempotent function a client retry would use, so running it twice, or racing a retry, is harmless."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from services.runtime.errors import AppError

log = structlog.get_logger()


async def resume_each(kind: str, resource_ids: list[str], resume: Callable[[str], Awaitable[object]]) -> int:
    """Resumes each stale resource; a final refusal is its outcome, not a failure of the pass."""
    for resource_id in resource_ids:
        try:
            await resume(resource_id)
        except AppError as error:
            log.info("recovery_outcome", kind=kind, resource_id=resource_id, code=error.code.name, reason=error.reason)
        except Exception:
            # One broken item must not stall the rest of the pass (it is tried again next pass).
            log.exception("recovery_failed", kind=kind, resource_id=resource_id)
    if resource_ids:
        log.info("recovery_pass", kind=kind, resumed=len(resource_ids))
    return len(resource_ids)

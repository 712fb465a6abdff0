"""structlog set up once per process: JSON lines to stdout (or readable console lines in development), each with
the request_id of its call (bound by the interceptor) and, when tracing is on, the trace_id of its span."""

from __future__ import annotations

import logging
import sys

import structlog

from services.runtime import tracing


def configure_logging(service_name: str, level: str = "info", log_format: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            # trace_id and span_id of the current span (tracing on only), beside the request_id bound per call.
            tracing.add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service_name)

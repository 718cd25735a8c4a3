"""Collector errors: children of the one AgentError hierarchy, mapped to HTTP statuses by `app`."""

from __future__ import annotations

from agent.errors import AgentError


class CollectorError(AgentError):
    """Base of the collector's errors. `status` is the HTTP status the app answers with."""

    status = 500


class DatabaseError(CollectorError):
    """The database is unreachable, or its schema is not the one this collector expects."""

    status = 503


class NotFoundError(CollectorError):
    status = 404


class UnauthorizedError(CollectorError):
    status = 401


class ForbiddenError(CollectorError):
    status = 403


class TooLargeError(CollectorError):
    status = 413


class ConflictError(CollectorError):
    """A run_id already stored with a different report (the same host's, or another host's)."""

    status = 409


class InvalidReportError(CollectorError):
    """The body is not a valid report; `field` names the offending field when known."""

    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadRequestError(CollectorError):
    status = 400


class NoDatabaseError(DatabaseError):
    """A command that must not create a database found none (exit 66, EX_NOINPUT, on the command line)."""

    exit_code = 66


class ConfigurationError(CollectorError):
    """A setting names something this collector cannot use: a --db URL that is none, a TLS file it cannot
    load (exit 78, EX_CONFIG)."""

    exit_code = 78


class InvalidActionError(CollectorError):
    """A review action with a missing or wrong field (the message names it): 422."""

    status = 422


class UnsupportedMediaTypeError(CollectorError):
    """A body in a format the route does not read (HTTP 415), e.g. a multipart post to a form."""

    status = 415


class TooManyError(CollectorError):
    """Too many requests of a kind are waiting (HTTP 429): try again once some are decided."""

    status = 429

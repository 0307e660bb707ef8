"""Errors whose message is meant for a user: the CLI and the app print str(err), no traceback."""


class ArchiveError(Exception):
    """Base of every user-facing archive error."""


class ArchiveNotFoundError(ArchiveError):
    """No archive at the given URL."""


class UnknownRunError(ArchiveError):
    """A run name or id that the archive does not hold."""


class QueryError(ArchiveError):
    """A SQL query that failed (syntax, unknown column, ...)."""


class SandboxError(QueryError):
    """A query refused or interrupted by the SQL sandbox."""


class FormatVersionError(ArchiveError):
    """An archive written by a newer flightlog than this one."""

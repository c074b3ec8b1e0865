"""The one exception a service raises when a rule refuses an action."""


class DomainError(Exception):
    """A business rule said no; ``message`` is written for the user who asked."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ConflictError(DomainError):
    """Someone else saved the same record since the user opened it."""

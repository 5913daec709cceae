"""Business rules. Views, jobs and the CLI call these; they never hold rules of their own."""


class ServiceError(Exception):
    """A rule refused what was asked; the message is meant for the user."""


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class Invalid(ServiceError):
    """Input a rule refuses; ``field`` names the input it is about, for forms to show it there."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

"""Business rules. Views, jobs and the CLI call these; they never hold rules of their own."""


class ServiceError(Exception):
    """A rule refused what was asked; the message is meant for the user."""


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass

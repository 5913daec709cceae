"""The error a request is answered with, whichever stage or engine raised it."""


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(name) -> APIError:
    return APIError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found")


# What a key check answers, on an app server and on the gateway alike.
def missing_key() -> APIError:
    return APIError(
        401,
        "Missing API key: send 'Authorization: Bearer <key>'. Keys are made on the application's page.",
        code="invalid_api_key",
    )


def incorrect_key() -> APIError:
    return APIError(401, "Incorrect API key provided.", code="invalid_api_key")


def key_store_unreachable() -> APIError:
    return APIError(
        503,
        "The key store is unreachable and this key has not been seen yet; retry shortly.",
        "server_error",
        headers={"Retry-After": "5"},
    )

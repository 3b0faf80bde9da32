"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """An error to answer with `status` and an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return error_response(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, object]:
    """The error object OpenAI clients parse."""
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(status, message, param), status_code=status)

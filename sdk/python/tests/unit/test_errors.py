"""API answers become typed errors carrying the server's message."""

from __future__ import annotations

import json

import pytest

from fast_sandbox import errors as e


def status(code: int, message: str, reason: str = "", **extra: object) -> bytes:
    body = {"kind": "Status", "status": "Failure", "code": code, "message": message}
    if reason:
        body["reason"] = reason
    body.update(extra)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (400, "BadRequest", e.BadRequestError),
        (422, "Invalid", e.BadRequestError),
        (401, "Unauthorized", e.UnauthorizedError),
        (403, "Forbidden", e.ForbiddenError),
        (404, "NotFound", e.NotFoundError),
        (409, "Conflict", e.ConflictError),
        (409, "AlreadyExists", e.AlreadyExistsError),
        (413, "RequestEntityTooLarge", e.PayloadTooLargeError),
        (429, "TooManyRequests", e.TooManyRequestsError),
        (500, "InternalError", e.ServerError),
        (503, "ServiceUnavailable", e.ServerError),
    ],
)
def test_codes_map_to_types(code: int, reason: str, kind: type[e.ApiError]) -> None:
    err = e.error_from_status(code, status(code, "the server's words", reason))
    assert type(err) is kind
    assert str(err) == "the server's words"
    assert (err.code, err.reason) == (code, reason)
    assert isinstance(err, e.FastSandboxError)


def test_a_missing_sandbox_is_told_apart_from_a_missing_path() -> None:
    gone = e.error_from_status(
        404, status(404, 'sandboxes.subresources.sandbox.fast.io "x" not found'), access_api=True
    )
    assert isinstance(gone, e.SandboxNotFoundError)
    crd = e.error_from_status(
        404,
        status(
            404,
            'sandboxes.sandbox.fast.io "x" not found',
            "NotFound",
            details={"name": "x", "group": "sandbox.fast.io", "kind": "sandboxes"},
        ),
    )
    assert isinstance(crd, e.SandboxNotFoundError)
    path = e.error_from_status(404, status(404, "/tmp/nope: no such file"), access_api=True)
    assert isinstance(path, e.PathNotFoundError)
    assert isinstance(path, FileNotFoundError), "except FileNotFoundError works"


def test_a_missing_access_api_says_what_to_install() -> None:
    for code, msg in [
        (404, "the server could not find the requested resource"),
        (503, "service unavailable"),
    ]:
        err = e.error_from_status(code, status(code, msg), access_api=True)
        assert isinstance(err, e.AccessApiUnavailableError)
        assert "fast-sandbox-gateway" in str(err)
    # The same 404 from the CRD API is a plain not found.
    assert type(e.error_from_status(404, status(404, "could not find the requested resource"))) is (
        e.NotFoundError
    )


def test_not_running_is_its_own_conflict_on_the_access_api() -> None:
    err = e.error_from_status(
        409,
        status(
            409, "sandbox sb is Pending: not bound to an agent yet (NoCapacity: ...)", "Conflict"
        ),
        access_api=True,
    )
    assert isinstance(err, e.SandboxNotRunningError)
    assert "NoCapacity" in err.message


def test_a_files_conflict_is_not_the_sandboxs_state() -> None:
    def about_path(code: int, message: str, reason: str) -> bytes:
        causes = [{"field": "path", "message": message}]
        return status(code, message, reason, details={"causes": causes})

    exists = e.error_from_status(
        409, about_path(409, "mkdir /tmp/s: File exists", "AlreadyExists"), access_api=True
    )
    assert type(exists) is e.AlreadyExistsError
    not_empty = e.error_from_status(
        409, about_path(409, "remove /tmp/d: Directory not empty", "Conflict"), access_api=True
    )
    assert type(not_empty) is e.ConflictError
    assert not isinstance(not_empty, e.SandboxNotRunningError)


def test_bodies_that_are_not_statuses_still_make_errors() -> None:
    assert str(e.error_from_status(502, b"Bad Gateway")) == "Bad Gateway"
    assert str(e.error_from_status(500, None, fallback="Internal Server Error")) == (
        "Internal Server Error"
    )
    assert str(e.error_from_status(500, b"")) == "HTTP 500"
    assert e.parse_status_body(b"[1, 2]") == {}
    assert e.parse_status_body({"message": "m"}) == {"message": "m"}


def test_timeouts_are_builtin_timeouts_too() -> None:
    for kind in (e.SandboxTimeoutError, e.NoCapacityError, e.PoolNotFoundError):
        err = kind("late", reason="NoCapacity", name="sb")
        assert isinstance(err, TimeoutError)
        assert (err.name, err.reason, str(err)) == ("sb", "NoCapacity", "late")
    cmd = e.CommandTimeoutError("killed after the timeout of 1s")
    assert isinstance(cmd, TimeoutError) and cmd.result is None

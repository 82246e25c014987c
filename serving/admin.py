"""The admin API: a FastAPI app mounted under /admin (its handlers are methods of the service, `serving.service`),
behind a bearer token (`EMBER_ADMIN_TOKEN`; unset = the admin API answers 403), with errors in the APIs'
{"error", "field"} shape."""

from __future__ import annotations

import hmac
import os
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from serving.http_errors import AsciiJSONResponse, error_body

ADMIN_TOKEN_ENV = "EMBER_ADMIN_TOKEN"


class AdminError(Exception):
    def __init__(self, status: int, error: str, field: str) -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


class PromoteRequest(BaseModel):
    variant: str


admin = FastAPI(title="Ember admin", docs_url=None, redoc_url=None, openapi_url=None)


@admin.exception_handler(AdminError)
async def _admin_error(_: Request, err: AdminError) -> JSONResponse:
    return AsciiJSONResponse({"error": err.error, "field": err.field}, status_code=err.status)


@admin.exception_handler(RequestValidationError)
async def _admin_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    return AsciiJSONResponse(error_body(err.errors(), skip=("body",)), status_code=400)


@admin.exception_handler(HTTPException)
async def _admin_http_error(_: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own 4xx (a body it cannot parse, an unknown route) in the {"error", "field"} shape too."""
    body = {"error": f"body: {err.detail}", "field": "body"}
    return AsciiJSONResponse(body, status_code=err.status_code, headers=err.headers)


def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
    """401 without the right bearer token; 403 when no token is configured (the admin API is then off)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise AdminError(403, f"the admin API is disabled: {ADMIN_TOKEN_ENV} is not set", "Authorization")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme != "Bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminError(401, "missing or wrong bearer token", "Authorization")

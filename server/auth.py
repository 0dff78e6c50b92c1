"""Optional API keys: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from server.errors import GatewayError


class ApiKeyAuth:
    """With no keys configured every request passes, whatever its Authorization header."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str:
        """The presented key when it is accepted ("" when no keys are configured); else 401."""
        if not self._keys:
            return ""
        presented = _bearer(authorization)
        if presented is None:
            raise _unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        candidate = presented.encode()
        # Compare against every key, without stopping early, so the time taken does not
        # tell which key (or how much of one) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise _unauthorized("Incorrect API key provided.")
        return presented


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )

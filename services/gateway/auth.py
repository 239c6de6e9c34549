"""Bearer API keys → tenants. Keys are compared as sha256 digests; a key is never logged."""

from __future__ import annotations

import hmac
from typing import NamedTuple

from services.errors import AuthenticationError
from services.gateway.config import AuthConfig, hash_key


class Identity(NamedTuple):
    """Who a request acts as: its tenant, and whether its key is an admin key."""

    tenant: str
    admin: bool


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self.anonymous_tenant = config.anonymous_tenant
        self._keys = {k.sha256: Identity(k.tenant, k.admin) for k in config.keys}

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header value; raises 401 if it has no valid key."""
        return self.identify(authorization).tenant

    def identify(self, authorization: str | None) -> Identity:
        """The identity of an ``Authorization`` header value; raises 401 if it has no valid key.

        With auth off (allowed on loopback only) every caller is the anonymous tenant,
        with admin rights: it is the machine's own user.
        """
        if not self.enabled:
            return Identity(self.anonymous_tenant, True)
        if not authorization:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("The Authorization header must be 'Bearer YOUR_KEY'.")
        digest = hash_key(key)
        for known, who in self._keys.items():
            # constant-time comparison: timing must not reveal how much of a digest matched
            if hmac.compare_digest(known, digest):
                return who
        raise AuthenticationError("Incorrect API key provided.")

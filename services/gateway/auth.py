"""Bearer API keys → tenants. Keys are compared as sha256 digests; a key is never logged."""

from __future__ import annotations

import hmac

from services.errors import AuthenticationError
from services.gateway.config import AuthConfig, hash_key


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self.anonymous_tenant = config.anonymous_tenant
        self._tenants = {k.sha256: k.tenant for k in config.keys}

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header value; raises 401 if it has no valid key."""
        if not self.enabled:
            return self.anonymous_tenant
        if not authorization:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("The Authorization header must be 'Bearer YOUR_KEY'.")
        digest = hash_key(key)
        for known, tenant in self._tenants.items():
            # constant-time comparison: timing must not reveal how much of a digest matched
            if hmac.compare_digest(known, digest):
                return tenant
        raise AuthenticationError("Incorrect API key provided.")

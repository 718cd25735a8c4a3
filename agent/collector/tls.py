"""Client certificates (`serve --tls-client-ca`): uvicorn verifies them against the CA but does not put
the peer certificate in the ASGI scope, so this HTTP protocol reads it from the TLS connection once, when
the connection is made, and passes the name it certifies to every request of that connection through
the request state (`scope["state"]`, which uvicorn copies from the protocol for each request)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.collector.auth import CLIENT_CERT_HOST


def certified_name(cert: dict[str, Any]) -> str | None:
    """The host a client certificate names: its first DNS subjectAltName, else its subject CN."""
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS" and isinstance(value, str) and value:
            return value
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None


class ClientCertProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the certified name of the peer in each request's state."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        self.app_state = {**self.app_state, CLIENT_CERT_HOST: certified_name(cert) if cert else None}

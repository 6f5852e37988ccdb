"""``amvad serve``: settings -> services -> FastAPI app -> uvicorn, with credential-redacting logs.

It fails fast: a busy port or a model that cannot be loaded ends it with one clear line and status 1,
before any thread is started (/readyz is for states that pass, not for a service that cannot work)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import ssl

from amvad.runtime.redact import redact

from .config import ServiceSettings
from .security import RedactingFilter

log = logging.getLogger("amvad.service")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeError(RuntimeError):
    """The service cannot start (the CLI prints it as one line and exits with status 1)."""


def check_port_free(host: str, port: int) -> None:
    """Bind the address once, the way uvicorn will, to say clearly when another process holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (another amvad serve?); "
                                 f"choose another with --port") from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_tls(settings: ServiceSettings) -> dict:
    """uvicorn's TLS arguments (none without ``tls_cert``), after loading the pair once: a missing file, a
    key that is not the certificate's or a passphrase-protected key is one clear line, not a traceback."""
    if settings.tls_cert is None:
        return {}
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key,
                                                                            password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"cannot use the TLS certificate {settings.tls_cert} with the key {settings.tls_key}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    from .app import create_app
    from .wiring import Services
    check_port_free(settings.host, settings.port)
    tls = check_tls(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    services = Services(settings)
    try:
        services.start()
        guarded = services.auth.enabled  # reads users.json: a broken one stops the start here
    except Exception as exc:
        services.stop()
        raise ServeError(redact(f"cannot start: {exc}")) from None
    if not is_loopback(settings.host) and not guarded:
        log.warning("binding to %s without users or an API key: anyone who can reach this address can upload "
                    "clips and add cameras; add a user (amvad user add NAME --role admin) or set api_key",
                    settings.host)
    if not is_loopback(settings.host) and not tls:
        log.warning("serving plain HTTP on %s: passwords, keys and session cookies cross the network in the "
                    "clear; give --tls-cert/--tls-key (amvad tls self-signed makes a pair)", settings.host)
    config = uvicorn.Config(create_app(settings, services), host=settings.host, port=settings.port,
                            log_level="info", ws="websockets-sansio" if _has_sansio() else "auto", **tls)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactingFilter())
    uvicorn.Server(config).run()


def _has_sansio() -> bool:
    try:
        from uvicorn.protocols.websockets import websockets_sansio_impl  # noqa: F401
        return True
    except ImportError:
        return False

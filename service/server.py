"""``amvad serve``: settings -> services -> FastAPI app -> uvicorn, with credential-redacting logs.

It fails fast: a busy port or a model that cannot be loaded ends it with one clear line and status 1,
before any thread is started (/readyz is for states that pass, not for a service that cannot work)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from runtime.redact import redact

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


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    from .app import create_app
    from .wiring import Services
    check_port_free(settings.host, settings.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if not is_loopback(settings.host) and settings.api_key is None:
        log.warning("binding to %s without an API key: anyone who can reach this address can upload "
                    "clips and add cameras; set AMVAD_API_KEY or api_key in the config", settings.host)
    services = Services(settings)
    try:
        services.start()
    except Exception as exc:
        services.stop()
        raise ServeError(redact(f"cannot start: {exc}")) from None
    config = uvicorn.Config(create_app(settings, services), host=settings.host, port=settings.port,
                            log_level="info", ws="websockets-sansio" if _has_sansio() else "auto")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactingFilter())
    uvicorn.Server(config).run()


def _has_sansio() -> bool:
    try:
        from uvicorn.protocols.websockets import websockets_sansio_impl  # noqa: F401
        return True
    except ImportError:
        return False

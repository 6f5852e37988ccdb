"""``amvad serve``: settings -> FastAPI app -> uvicorn, with credential-redacting logs."""

from __future__ import annotations

import ipaddress
import logging

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


def serve(settings: ServiceSettings) -> None:
    import uvicorn

    from .app import create_app
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if not is_loopback(settings.host) and settings.api_key is None:
        log.warning("binding to %s without an API key: anyone who can reach this address can upload "
                    "clips and add cameras; set AMVAD_API_KEY or api_key in the config", settings.host)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
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

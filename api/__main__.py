"""``python -m api [--demo [FOLDER]]``: serve the API with hypercorn.

With no settings: SQLite under ``./data``, the built-in offline chat model, on
127.0.0.1:9380. ``--demo`` first ingests a folder (default: the project's ``docs/``)
into a dataset, creates a chat over it and prints what the Python client needs.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import socket
import sys
from pathlib import Path

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app
from peewee import DatabaseError, InterfaceError

from api.utils.log_redaction import redact
from common.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("ragsocket")

DEFAULT_DEMO_FOLDER = Path(__file__).resolve().parent.parent / "docs"


def hypercorn_config(settings: Settings) -> Config:
    """hypercorn settings: bind address, WebSocket limits and pings, redacted access log."""
    from api.utils.log_redaction import ACCESS_LOG_FORMAT, RedactingAccessLogger

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.websocket_max_message_size = settings.ws_max_message_bytes
    config.websocket_ping_interval = settings.ws_ping_interval
    config.accesslog = settings.access_log or None
    config.logger_class = RedactingAccessLogger
    config.access_log_format = ACCESS_LOG_FORMAT
    config.graceful_timeout = 5
    config.keep_alive_timeout = 75
    return config


def configure_logging(settings: Settings) -> None:
    """Root handler on stderr at ``RAGSOCKET_LOG_LEVEL``, credentials redacted in every record."""
    from api.utils.log_redaction import install_log_redaction

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("bm25s", "jieba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    install_log_redaction()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo",
        nargs="?",
        const=str(DEFAULT_DEMO_FOLDER),
        metavar="FOLDER",
        help="ingest FOLDER (default: the project's docs/) into a demo dataset and chat",
    )
    return parser.parse_args(argv)


def bind_sockets(config: Config, settings: Settings) -> Sockets:
    """Bind and listen on ``config.bind`` now, so that a bad address fails at once.

    Raises:
        SettingsError: the address is in use, not allowed or not local; the message
            names the setting to change (``RAGSOCKET_PORT`` / ``RAGSOCKET_HOST``).
    """
    address = f"{settings.host}:{settings.port}"
    try:
        sockets = config.create_sockets()
    except socket.gaierror as error:
        raise SettingsError(f"RAGSOCKET_HOST: cannot resolve {settings.host!r}: {error.strerror}") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            message = (f"RAGSOCKET_PORT: {address} is already in use (is another server running?); "
                       "stop it or choose another RAGSOCKET_PORT")
        elif error.errno == errno.EACCES:
            message = (f"RAGSOCKET_PORT: permission denied to listen on {address} "
                       "(ports below 1024 need privileges); choose another RAGSOCKET_PORT")
        elif error.errno == errno.EADDRNOTAVAIL:
            message = f"RAGSOCKET_HOST: {settings.host} is not an address of this machine"
        else:
            message = f"RAGSOCKET_HOST/RAGSOCKET_PORT: cannot listen on {address}: {error.strerror or error}"
        raise SettingsError(message) from None
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)  # connections queue from now on, instead of being refused
    return sockets


def close_sockets(sockets: Sockets) -> None:
    """Close the listening sockets (idempotent)."""
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


def bound_address(sockets: Sockets) -> tuple[str, int]:
    """``(host, port)`` actually bound (the real port when RAGSOCKET_PORT is 0)."""
    host, port = sockets.insecure_sockets[0].getsockname()[:2]
    return (f"[{host}]" if ":" in host else host), port


async def _serve(settings: Settings, demo_folder: Path | None) -> None:
    config = hypercorn_config(settings)
    sockets = bind_sockets(config, settings)
    try:
        await _serve_on(settings, demo_folder, config, sockets)
    finally:
        close_sockets(sockets)


async def _serve_on(settings: Settings, demo_folder: Path | None, config: Config, sockets: Sockets) -> None:
    from api.app import create_app
    from api.runtime import get_runtime
    from api.streaming import keepalive

    host, port = bound_address(sockets)
    keepalive.install(settings.ws_pong_timeout)
    try:
        app = create_app(settings)
    except (DatabaseError, InterfaceError, OSError) as error:
        url = redact(settings.resolved_database_url())
        raise SettingsError(f"RAGSOCKET_DATABASE_URL: cannot open {url}: {error}") from None
    if demo_folder is not None:
        from api.demo import run_demo

        await run_demo(settings.model_copy(update={"port": port}), demo_folder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        logger.info("shutting down: running answers have %.0f s to finish", settings.ws_shutdown_grace)
        await get_runtime().registry.shutdown(settings.ws_shutdown_grace)

    print(f"RagSocket listening on http://{host}:{port}/api/v1 "
          f"(WebSocket: ws://{host}:{port}/api/v1/ws/chats/<chat_id>/completions)", flush=True)
    await worker_serve(wrap_app(app, config.wsgi_max_body_size, None), config, sockets=sockets, shutdown_trigger=shutdown_trigger)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m api`` and the ``ragsocket`` console script."""
    args = _parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"ragsocket: invalid setting: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    demo_folder = Path(args.demo) if args.demo else None
    if demo_folder is not None and not demo_folder.is_dir():
        print(f"ragsocket: demo folder not found: {demo_folder}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings, demo_folder))
    except SettingsError as error:
        print(f"ragsocket: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m api [--demo [FOLDER]]``: serve the API with hypercorn.

With no settings: SQLite under ``./data``, the built-in offline chat model, on
127.0.0.1:9380. ``--demo`` first ingests a folder (default: the project's ``docs/``)
into a dataset, creates a chat over it and prints what the Python client needs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config
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


async def _serve(settings: Settings, demo_folder: Path | None) -> None:
    from api.app import create_app
    from api.runtime import get_runtime
    from api.streaming import keepalive

    keepalive.install(settings.ws_pong_timeout)
    try:
        app = create_app(settings)
    except (DatabaseError, InterfaceError, OSError) as error:
        url = redact(settings.resolved_database_url())
        raise SettingsError(f"RAGSOCKET_DATABASE_URL: cannot open {url}: {error}") from None
    if demo_folder is not None:
        from api.demo import run_demo

        await run_demo(settings, demo_folder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        logger.info("shutting down: running answers have %.0f s to finish", settings.ws_shutdown_grace)
        await get_runtime().registry.shutdown(settings.ws_shutdown_grace)

    print(f"RagSocket listening on http://{settings.host}:{settings.port}/api/v1 "
          f"(WebSocket: ws://{settings.host}:{settings.port}/api/v1/ws/chats/<chat_id>/completions)", flush=True)
    await serve(app, hypercorn_config(settings), shutdown_trigger=shutdown_trigger)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m api`` and the ``ragsocket`` console script."""
    args = _parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"ragsocket: invalid setting: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("bm25s", "jieba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    from api.utils.log_redaction import install_log_redaction

    install_log_redaction()
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

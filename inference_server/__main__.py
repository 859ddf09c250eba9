"""``python -m inference_server serve|demo|migrate``."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from inference_server import __version__, event_loop
from inference_server.config import Settings
from inference_server.logging_setup import configure

log = logging.getLogger("inference_server")

#: Seconds a stop may take before the process dumps its threads' stacks and exits anyway: the
#: components' grace and cancellation (``server.STOP_GRACE_S``, ``CANCEL_GRACE_S``), the
#: database's close, with room to spare. The add-on's stop timeout (``addon/config.yaml``) and
#: compose's ``stop_grace_period`` are longer, so the supervisor never has to kill it.
STOP_WATCHDOG_S = 30.0


async def _serve(settings: Settings, *, watchdog: bool = False) -> int:
    """Run the server until SIGTERM/SIGINT (exit status 0) or until a component fails (1: a
    supervisor — systemd, Docker, the add-on's — restarts it). ``watchdog`` (the process's own
    run, not a test's): once the stop begins, the process has ``STOP_WATCHDOG_S`` to end."""
    from inference_server.server import Server

    server = Server(settings)
    # Handlers go in before start-up: a service manager may send SIGTERM while the model loads or
    # the MQTT session is already announced ``online``. A stop asked for during start-up lets the
    # start finish (no half-opened database or broker to leak) and then stops cleanly at once.
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        await server.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server._stop.set)
        if stop_requested.is_set():
            log.info("stop requested during start-up; stopping now")
            server._stop.set()
        await server.wait_stopped()
    finally:
        if watchdog:
            # A stop that hangs (a thread stuck in a library, a component deaf to cancellation,
            # the interpreter waiting at exit for a thread that never ends) must not leave a dead
            # server that no supervisor restarts: past the watchdog, every thread's stack goes to
            # stderr (the log) and the process exits with status 1. It is never disarmed: a
            # process that ended in time never sees it.
            faulthandler.dump_traceback_later(STOP_WATCHDOG_S, exit=True, file=2)  # stderr: the log
        await server.stop()
    if server.failure is not None:
        log.critical("exiting with status %d: %s", server.exit_status, server.failure)
    return server.exit_status


async def _migrate(settings: Settings) -> None:
    from inference_server.server import open_database

    pool, embedded = await open_database(settings)
    await pool.close()
    if embedded is not None:
        await embedded.stop()


async def _apikey(settings: Settings, action: str, name: str | None) -> int:
    from inference_server.server import open_database
    from inference_server.store import api_keys

    pool, embedded = await open_database(settings)
    try:
        if action == "create":
            assert name is not None
            try:
                key = await api_keys.create(pool, name)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(key)
            print(f"API key {name!r} created. It is shown only this once: store it now.", file=sys.stderr)
        elif action == "revoke":
            assert name is not None
            if not await api_keys.revoke(pool, name):
                print(f"error: no active key named {name!r}", file=sys.stderr)
                return 1
            print(f"API key {name!r} revoked.", file=sys.stderr)
        else:
            for info in await api_keys.list_all(pool):
                state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
                used = f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "never"
                print(
                    f"{info.name}\thsi_{info.key_id}_…\t{state}\tcreated {info.created_at:%Y-%m-%d}\tlast used {used}"
                )
        return 0
    finally:
        await pool.close()
        if embedded is not None:
            await embedded.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference_server", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server until SIGTERM")
    serve.add_argument("--role", choices=["all", "api", "worker"], help="overrides HSI_ROLE")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    demo = sub.add_parser("demo", help="real images → detect → reason → store → publish, printed")
    demo.add_argument("--data-dir", type=Path, help="keep the demo's data here (default: a temp folder)")
    demo.add_argument("--serve", action="store_true", help="keep serving after the demo")
    keys = sub.add_parser("apikey", help="manage REST API keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("name", nargs="?", help="key name (create, revoke)")
    args = parser.parse_args(argv)
    if args.command == "apikey" and args.action != "list" and not args.name:
        parser.error(f"apikey {args.action} needs a NAME")

    overrides: dict[str, object] = {}
    if getattr(args, "role", None):
        overrides["role"] = args.role
    if args.command == "demo":
        from inference_server.demo import run_demo

        return event_loop.run(run_demo(args.data_dir, keep_serving=args.serve))
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure(settings.log_level, settings.log_format)
    if args.command == "serve":
        return event_loop.run(_serve(settings, watchdog=True), settings.event_loop)
    elif args.command == "apikey":
        return event_loop.run(_apikey(settings, args.action, args.name), settings.event_loop)
    else:
        event_loop.run(_migrate(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

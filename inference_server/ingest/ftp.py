"""Built-in FTP(S) receiver: cameras upload straight to the server, no separate FTP daemon.

pyftpdlib speaks the protocol (docs/decisions.md says why it, not aioftp); this module only
decides where an upload may go and what happens when it ends:

- every user is jailed in a home folder (one camera's folder, or the cameras folder for a
  shared user with per-camera subfolders); pyftpdlib resolves every path, ``../`` and symlinks
  included, and refuses anything outside it;
- an upload is written under a hidden ``.ftp-…part`` name the folder watcher ignores, renamed
  to its real name only when the transfer completes, then handed to the ingestor at once;
- a transfer that fails (connection lost, ABOR, over ``max_image_bytes``) is deleted: it never
  becomes a job. FTP ends a file by closing the data connection, so a client that simply stops
  sending looks complete to any server; such a truncated image fails ingest's JPEG/PNG end
  check and is quarantined, not queued.

pyftpdlib runs its own select loop: it gets a thread, and completed uploads cross to the
server's event loop with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.servers import FTPServer

from inference_server.config import FtpUser, Settings
from inference_server.ingest.clips import CLIP_SUFFIXES
from inference_server.ingest.filenames import camera_id_for_folder
from inference_server.ingest.ingestor import IngestResult, printable
from inference_server.logging_setup import FirstSeen

log = logging.getLogger(__name__)

#: Listing, changing folder, storing, creating folders, setting mtime. No reads of stored
#: images, no delete, no rename, no append: a camera only ever adds whole files.
_PERMISSIONS = "elwmT"
_PART_PREFIX = ".ftp-"


def _debug(msg: str) -> None:
    log.debug("%s", msg)


def parse_port_range(text: str) -> range | None:
    """``"30000-30009"`` → that range; ``"0"`` → None (any free port, for tests)."""
    if text == "0":
        return None
    start, _, end = text.partition("-")
    low, high = int(start), int(end or start)
    if not 0 < low <= high < 65536:
        raise ValueError(f"bad passive port range {text!r}")
    return range(low, high + 1)


class FtpReceiver:
    """The FTP server in its own thread; ``ingest`` runs on ``loop`` for each finished upload."""

    def __init__(
        self,
        settings: Settings,
        ingest: Callable[[Path], Coroutine[Any, Any, IngestResult]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.root = settings.cameras_path
        self._ingest = ingest
        self._loop = loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pending: set[Future[IngestResult]] = set()
        #: (user, address) pairs whose login was logged at INFO (the FTP thread's only).
        self.logins = FirstSeen()
        self.port = settings.ftp_port
        self.server = self._build_server()
        self._waker = _Waker()

    def _build_server(self) -> FTPServer:
        s = self.settings
        authorizer = DummyAuthorizer()
        self.root.mkdir(parents=True, exist_ok=True)
        for user in s.ftp_users:
            home = self._home(user)
            home.mkdir(parents=True, exist_ok=True)
            authorizer.add_user(user.username, user.password.get_secret_value(), str(home), perm=_PERMISSIONS)
        server = FTPServer((s.ftp_host, s.ftp_port), _handler_class(s, self, authorizer))
        server.max_cons = s.ftp_max_connections
        server.max_cons_per_ip = s.ftp_max_connections_per_ip
        self.port = server.socket.getsockname()[1]
        return server

    def _home(self, user: FtpUser) -> Path:
        if user.camera is None:
            return self.root
        return self.root / user.camera

    def _finished(self, final: Path, username: str) -> None:
        """In the FTP thread: hand an upload, already under its real name, to ingest now."""
        log.debug(
            "ftp upload received user=%s camera_id=%s file=%s",
            username,
            camera_id_for_folder(final.relative_to(self.root).parts[0]) if final.is_relative_to(self.root) else None,
            printable(final),
        )
        future = asyncio.run_coroutine_threadsafe(self._ingest(final), self._loop)
        self.pending.add(future)
        future.add_done_callback(self._ingested)

    def _ingested(self, future: Future[IngestResult]) -> None:
        self.pending.discard(future)
        if future.cancelled():
            return
        err = future.exception()
        if err is not None:
            # The file stays in the camera folder: the watcher's rescan ingests it later.
            log.error("ftp upload not ingested yet, the folder rescan retries error=%r", err)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="ftp", daemon=True)
        self._thread.start()
        log.info(
            "ftp receiver listening host=%s port=%d passive=%s users=%d tls=%s",
            self.settings.ftp_host,
            self.port,
            self.settings.ftp_passive_ports,
            len(self.settings.ftp_users),
            self.settings.ftp_tls_cert is not None,
        )

    def _serve(self) -> None:
        # pyftpdlib's IOLoop one poll at a time, as serve_forever(blocking=False) does, but
        # without it (serve_forever logs ">>> starting FTP server" at INFO on every call). Each
        # poll waits for a socket, the loop's next scheduled call (a connection's timeout) or
        # stop()'s wake-up, never a fixed interval: an idle receiver does not wake at all (a
        # 0.2 s poll cost 0.06 % of a core, docs/performance.md, stop 44).
        ioloop = self.server.ioloop
        ioloop.register(self._waker.fileno(), self._waker, ioloop.READ)
        try:
            soonest: float | None = None
            while not self._stop.is_set():
                soonest = ioloop.loop(timeout=soonest, blocking=False)
        finally:
            self.server.close_all()

    def stop(self) -> None:
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Waker:
    """One end of a socket pair in pyftpdlib's IOLoop: a byte written to the other end (from
    any thread) ends the loop's wait, so ``FtpReceiver.stop`` need not wait out a poll."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._fileno = self._read.fileno()  # pyftpdlib's IOLoop.close sorts its sockets by it

    def fileno(self) -> int:
        return self._fileno

    def wake(self) -> None:
        try:
            self._write.send(b"\0")
        except OSError as err:  # closed by the loop's close, or the pair's buffer full: awake anyway
            log.debug("ftp waker: %r", err)

    def readable(self) -> bool:
        return True

    def handle_read_event(self) -> None:
        try:
            self._read.recv(4096)
        except BlockingIOError:
            return

    def handle_error(self) -> None:
        log.exception("ftp waker failed")

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        self._read.close()
        self._write.close()


class _LimitedDTP(DTPHandler):  # type: ignore[misc]
    """Data channel that aborts an upload past ``max_bytes`` (a video clip: ``max_clip_bytes``),
    set per server by `_handler_class`."""

    max_bytes: ClassVar[int]
    max_clip_bytes: ClassVar[int]

    def handle_read(self) -> None:
        super().handle_read()
        name = str(getattr(self.file_obj, "name", ""))
        clip = Path(name.removesuffix(".part")).suffix.lower() in CLIP_SUFFIXES  # written as <name>.part
        limit = self.max_clip_bytes if clip else self.max_bytes
        if self.receive and self.tot_bytes_received > limit and not self._closed:
            self._resp = (f"552 File exceeds {limit} bytes; transfer aborted.", log.warning)
            self.transfer_finished = False
            self.close()

    # pyftpdlib's loop calls handle_read_event, which the base class binds to its own
    # handle_read: rebind it, or the limit is never checked.
    handle_read_event = handle_read

    def close(self) -> None:
        # pyftpdlib replies "226" here, before on_file_received: give the upload its
        # real name first, so a name that cannot take it (a folder made meanwhile, a
        # rename error) is answered with an error instead of 226 and a silent drop.
        if not self._closed and self.receive and self.transfer_finished and self.file_obj is not None:
            self.file_obj.close()
            refusal = self.cmd_channel.commit_upload(Path(self.file_obj.name))
            if refusal is not None:
                self._resp = (refusal, log.warning)
                self.transfer_finished = False
        super().close()


class _CameraHandler(FTPHandler):  # type: ignore[misc]
    """One camera's FTP session: jailed uploads under a part name, committed whole or deleted.

    pyftpdlib configures a session through class attributes, so `_handler_class` derives one
    subclass per server that sets the receiver, passive ports, timeouts, data channel and TLS.
    """

    banner = "Home Security Intelligence ready."
    passive_ports: ClassVar[list[int] | None] = None
    permit_foreign_addresses = False
    use_sendfile = False
    _hsi_receiver: ClassVar[FtpReceiver]
    _hsi_final: Path | None = None
    _hsi_login_deadline: Any = None

    def on_connect(self) -> None:
        # pyftpdlib's `timeout` is an idle timeout, reset by every command: without a
        # deadline of its own, a connection that never logs in holds a slot for ever.
        self._hsi_login_deadline = self.ioloop.call_later(
            self.login_timeout, self._hsi_login_expired, _errback=self.handle_error
        )

    def _hsi_login_expired(self) -> None:
        if self.authenticated or self._closed:
            return
        log.info("ftp login timed out, connection closed remote=%s", self.remote_ip)
        if not getattr(self, "_ssl_accepting", False):  # no reply in a TLS handshake
            self.respond("421 Login timed out.", logfun=_debug)
        # close(), not close_when_done(): a client that does not read must not keep
        # the connection open by leaving the reply unsent.
        self.close()

    def _hsi_cancel_login_deadline(self) -> None:
        deadline = self._hsi_login_deadline
        if deadline is not None and not deadline.cancelled:
            deadline.cancel()
        self._hsi_login_deadline = None

    def ftp_REST(self, line: str) -> None:
        # Resuming needs the first part of a file, and a failed upload is deleted, never
        # committed: refuse REST here and keep no restart state that a later STOR of
        # the session would trip over. "REST 0" (a no-op some clients send) is fine.
        if line.strip() == "0":
            self.respond("350 Restarting at position 0.")
        else:
            self.respond("502 REST (resume) is not supported; upload the whole file.")

    def ftp_STOR(self, file: str, mode: str = "w") -> Any:
        if "a" in mode:
            self.respond("502 Append is not supported; upload the whole file.")
            return None
        final = Path(file)
        if self.fs.isdir(file):
            self.respond("550 A folder has that name; name the file.")
            return None
        if final.name.startswith("."):
            self.respond("553 Hidden file names are not accepted.")
            return None
        part = final.with_name(f"{_PART_PREFIX}{secrets.token_hex(6)}-{final.name}.part")
        self._hsi_final = final
        return super().ftp_STOR(str(part), mode)

    def ftp_STOU(self, line: str) -> None:
        self.respond("502 STOU is not supported; name the file with STOR.")

    def commit_upload(self, part: Path) -> str | None:
        """Rename a complete upload to its real name; the error reply if it cannot be."""
        final = self._hsi_final
        if final is None:
            _remove(part)
            return "451 Upload lost its name; send it again."
        try:
            os.replace(part, final)
        except OSError as err:
            log.warning(
                "ftp upload refused, cannot take its name user=%s file=%s error=%r",
                self.username,
                printable(final),
                err,
            )
            _remove(part)
            self._hsi_final = None
            return f"550 Cannot store {final.name!r}: {err.strerror or 'rename failed'}."
        return None

    def on_file_received(self, file: str) -> None:
        final, self._hsi_final = self._hsi_final, None
        if final is not None:
            self._hsi_receiver._finished(final, self.username)

    def on_incomplete_file_received(self, file: str) -> None:
        self._hsi_final = None
        log.warning("ftp upload incomplete, discarded user=%s file=%s", self.username, printable(file))
        _remove(Path(file))

    def on_login(self, username: str) -> None:
        self._hsi_cancel_login_deadline()
        # A camera logs in for each picture it sends: a login from a new user or address is
        # logged at INFO, the same one again at DEBUG (a failed login is always a warning).
        level = self._hsi_receiver.logins.level((username, self.remote_ip))
        log.log(level, "ftp login user=%s remote=%s", username, self.remote_ip)

    def on_logout(self, username: str) -> None:
        # USER again or REIN: unauthenticated once more, so the login deadline applies.
        self.on_connect()

    def on_login_failed(self, username: str, password: str) -> None:
        log.warning("ftp login failed user=%s remote=%s", username, self.remote_ip)

    def close(self) -> None:
        self._hsi_cancel_login_deadline()
        super().close()

    def log(self, msg: str, logfun: Callable[[str], object] = _debug) -> None:
        # pyftpdlib logs each session's open, close, login, MKD/CWD and transfer at INFO,
        # in its own format: five lines per camera upload. The key=value lines of this
        # module say what matters; pyftpdlib's own go to DEBUG.
        log.debug("ftp session remote=%s:%s user=%s message=%r", self.remote_ip, self.remote_port, self.username, msg)

    def logerror(self, msg: str) -> None:
        log.error(
            "ftp session error remote=%s:%s user=%s message=%r",
            self.remote_ip,
            self.remote_port,
            self.username,
            msg,
        )


def _handler_class(settings: Settings, receiver: FtpReceiver, authorizer: DummyAuthorizer) -> type[FTPHandler]:
    """A `_CameraHandler` subclass configured for one server (over TLS when a certificate is set)."""
    ports = parse_port_range(settings.ftp_passive_ports)
    dtp: type[DTPHandler] = type(
        "LimitedDTP", (_LimitedDTP,), {"max_bytes": settings.max_image_bytes, "max_clip_bytes": settings.clip_max_bytes}
    )
    attrs: dict[str, Any] = {
        "authorizer": authorizer,
        "passive_ports": list(ports) if ports is not None else None,
        "timeout": settings.ftp_idle_timeout_s,
        "login_timeout": settings.ftp_login_timeout_s,
        "_hsi_receiver": receiver,
    }
    if settings.ftp_tls_cert is None:
        return type("CameraHandler", (_CameraHandler,), {**attrs, "dtp_handler": dtp})
    # pyftpdlib defines its TLS handlers only when pyOpenSSL is installed.
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

    attrs.update(
        dtp_handler=type("LimitedTlsDTP", (TLS_DTPHandler, dtp), {}),
        certfile=str(settings.ftp_tls_cert),
        keyfile=str(settings.ftp_tls_key) if settings.ftp_tls_key else None,
        tls_control_required=True,
        tls_data_required=True,
    )
    return type("TlsCameraHandler", (_CameraHandler, TLS_FTPHandler), attrs)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as err:
        log.error("could not remove partial upload file=%s error=%r", printable(path), err)

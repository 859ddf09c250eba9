"""The built-in FTP receiver, driven by Python's ftplib the way a Foscam/Reolink/Hikvision
camera uploads: login, dated folders, STOR of whole JPEGs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ftplib
import io
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.server import Server
from tests.support.certs import self_signed
from tests.support.waiting import wait_until

from ..conftest import running
from .conftest import with_comment

PASSWORD = "s3cret-pass"
BUS = demo_assets.image("bus.jpg").read_bytes()


def _settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    users = [
        {"username": "porch", "password": PASSWORD, "camera": "porch"},
        {"username": "nvr", "password": PASSWORD},
    ]
    values: dict[str, Any] = {
        "ftp_enabled": True,
        "ftp_host": "127.0.0.1",
        "ftp_port": 0,
        "ftp_passive_ports": "0",
        "ftp_users": users,
    }
    values.update(overrides)
    return make_settings(**values)


def _client(server: Server, user: str = "porch", password: str = PASSWORD) -> ftplib.FTP:
    assert server.ftp is not None
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", server.ftp.port, timeout=10)
    ftp.login(user, password)
    return ftp


def stor_replies(ftp: ftplib.FTP, uploads: list[tuple[str, bytes, int | None]]) -> list[str]:
    """``STOR`` each (name, data, ``REST`` offset) in one session: the final reply of each, a
    refusal included (the session goes on)."""
    replies: list[str] = []
    for name, data, rest in uploads:
        try:
            replies.append(ftp.storbinary(f"STOR {name}", io.BytesIO(data), rest=rest))
        except ftplib.error_perm as err:
            replies.append(str(err))
        except (ConnectionResetError, BrokenPipeError):
            # Refused mid-transfer: the server closed the data connection while this client was
            # still sending; its reply waits on the control connection.
            try:
                replies.append(ftp.voidresp())
            except ftplib.error_perm as err:
                replies.append(str(err))
    return replies


async def _jobs(server: Server) -> list[tuple[str, str]]:
    rows = await server.pool.fetch(
        "SELECT i.camera_id, j.state FROM jobs j JOIN images i ON i.id = j.image_id ORDER BY j.id"
    )
    return [(r["camera_id"], r["state"]) for r in rows]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_a_camera_upload_becomes_an_event_at_once(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    # A long watcher stability wait: only the receiver's direct hand-off can be this quick.
    settings = _settings(make_settings, file_stable_s=30)
    async with running(settings, pose_detector) as server:

        def upload() -> None:
            with _client(server) as ftp:
                for part in ("2026", "11", "24"):  # Reolink-style dated folders
                    ftp.mkd(part)
                    ftp.cwd(part)
                ftp.storbinary("STOR MDAlarm_20261124-021000.jpg", io.BytesIO(BUS))

        await asyncio.to_thread(upload)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"), 20)
        assert await _jobs(server) == [("porch", "done")]
        row = await server.pool.fetchrow("SELECT original_name, captured_at FROM images")
        assert row["original_name"] == "porch/2026/11/24/MDAlarm_20261124-021000.jpg"
        assert row["captured_at"] == dt.datetime(2026, 11, 24, 2, 10, tzinfo=dt.UTC)
        assert await server.pool.fetchval("SELECT count(*) FROM detections WHERE label = 'person'") == 4
        # The camera's activity batch closes after batch_idle_s: one event.
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM events WHERE camera_id = 'porch'"), 20)
        # The upload left nothing behind in the camera folder.
        assert _files(settings.cameras_path) == []


async def test_a_shared_user_uploads_into_per_camera_folders(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings)
    async with running(settings, pose_detector) as server:

        def upload() -> None:
            with _client(server, "nvr") as ftp:
                for camera in ("garage", "garden"):
                    ftp.mkd(f"/{camera}")
                    ftp.storbinary(f"STOR /{camera}/snap_20261124_120000.jpg", io.BytesIO(BUS))

        await asyncio.to_thread(upload)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM jobs WHERE state = 'done'"), 30)
        assert sorted(await _jobs(server)) == [("garage", "done"), ("garden", "done")]


async def test_wrong_password_append_and_hidden_names_are_refused_and_paths_stay_jailed(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings)
    outside = settings.data_dir / "outside.jpg"
    async with running(settings, pose_detector) as server:

        def attempts() -> list[str]:
            replies = []
            with pytest.raises(ftplib.error_perm) as wrong:
                _client(server, "porch", "not-the-password")
            replies.append(str(wrong.value))
            with _client(server) as ftp:
                for command in ("STOR ../../outside.jpg", "STOR ../garden/x.jpg", "APPE x.jpg", "STOR .hidden.jpg"):
                    try:
                        ftp.storbinary(command, io.BytesIO(BUS))
                    except ftplib.error_perm as err:
                        replies.append(f"{command}: {err}")
                    else:
                        replies.append(f"{command}: accepted")
                # pyftpdlib jails the user: ".." at the root is the root again.
                ftp.cwd("../..")
                replies.append(ftp.pwd())
            return replies

        replies = await asyncio.to_thread(attempts)
        assert replies[0].startswith("530")
        # Resolved inside the jail: "/outside.jpg" of this camera's folder, never above it.
        assert replies[1] == "STOR ../../outside.jpg: accepted"
        assert replies[2].startswith("STOR ../garden/x.jpg: 550")
        assert replies[3].startswith("APPE x.jpg: 550")  # no "a" permission for cameras
        assert replies[4].startswith("STOR .hidden.jpg: 553")
        assert replies[5] == "/"
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"), 20)
        assert await _jobs(server) == [("porch", "done")]
        assert await server.pool.fetchval("SELECT original_name FROM images") == "porch/outside.jpg"
        assert not outside.exists()
        assert not (settings.cameras_path / "garden").exists()


async def test_aborted_and_oversized_uploads_never_become_jobs(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings, max_image_bytes=100_000)
    assert len(BUS) > 100_000
    small = io.BytesIO()
    from PIL import Image

    with Image.open(demo_assets.image("zidane.jpg")) as img:
        img.convert("RGB").resize((640, 360)).save(small, format="JPEG", quality=85)
    async with running(settings, pose_detector) as server:

        def aborted() -> str:
            # 0. The camera aborts (ABOR) mid-transfer: the server knows the file is incomplete.
            with _client(server) as ftp:
                data = ftp.transfercmd("STOR MDAlarm_20261124-025959.jpg")
                data.sendall(small.getvalue()[:20_000])
                reply = ftp.abort()
                data.close()
                return reply

        reply = await asyncio.to_thread(aborted)
        assert reply.startswith("426")  # "Transfer aborted via ABOR."
        await asyncio.sleep(0.5)
        assert _files(settings.cameras_path) == []
        assert await server.pool.fetchval("SELECT count(*) FROM quarantine") == 0
        assert await _jobs(server) == []

        def uploads() -> str:
            # 1. The camera loses its connection mid-transfer: control and data sockets drop.
            ftp = _client(server)
            data = ftp.transfercmd("STOR MDAlarm_20261124-030000.jpg")
            data.sendall(small.getvalue()[:20_000])
            ftp.sock.shutdown(socket.SHUT_RDWR)
            ftp.sock.close()
            data.close()
            # 2. Larger than max_image_bytes: the server cuts it off.
            with _client(server) as ftp2:
                try:
                    ftp2.storbinary("STOR MDAlarm_20261124-030001.jpg", io.BytesIO(BUS))
                except ftplib.error_perm as err:
                    too_big = str(err)
                else:
                    too_big = "accepted"
                # 3. A good one after both, on the same server.
                ftp2.storbinary("STOR MDAlarm_20261124-030002.jpg", io.BytesIO(small.getvalue()))
            return too_big

        too_big = await asyncio.to_thread(uploads)
        assert too_big.startswith("552")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"), 20)
        await asyncio.sleep(0.5)
        names = [r["original_name"] for r in await server.pool.fetch("SELECT original_name FROM images")]
        assert names == ["porch/MDAlarm_20261124-030002.jpg"]
        # The dropped connection may reach the server as "data ended" before "control closed":
        # then the half file is judged complete, and ingest's JPEG end check quarantines it.
        reasons = [r["reason"] for r in await server.pool.fetch("SELECT reason FROM quarantine")]
        assert set(reasons) <= {"truncated"} and len(reasons) <= 1
        assert _files(settings.cameras_path) == []


async def test_a_client_that_stops_mid_file_is_quarantined_as_truncated(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    # Stream-mode FTP ends a file by closing the data connection: a camera that stops sending
    # halfway looks like a finished upload. The JPEG end check catches it: quarantine, no job.
    settings = _settings(make_settings)
    async with running(settings, pose_detector) as server:

        def upload() -> None:
            with _client(server) as ftp:
                ftp.storbinary("STOR MDAlarm_20261124-040000.jpg", io.BytesIO(BUS[: len(BUS) // 2]))

        await asyncio.to_thread(upload)
        reason = await wait_until(lambda: server.pool.fetchval("SELECT reason FROM quarantine"), 20)
        assert reason == "truncated"
        assert await _jobs(server) == []


async def test_ftps_login_and_upload(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, tmp_path: Path
) -> None:
    cert = _self_signed(tmp_path)
    settings = _settings(make_settings, ftp_tls_cert=cert)
    async with running(settings, pose_detector) as server:
        assert server.ftp is not None
        port = server.ftp.port

        def upload() -> str:
            plain = ftplib.FTP()
            plain.connect("127.0.0.1", port, timeout=10)
            try:
                plain.login("porch", PASSWORD)
            except ftplib.error_perm as err:
                refused = str(err)
            else:
                refused = "plain login accepted"
            plain.close()
            import ssl

            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
            with ftplib.FTP_TLS(context=context) as ftps:
                ftps.connect("127.0.0.1", port, timeout=10)
                ftps.login("porch", PASSWORD)
                ftps.prot_p()
                ftps.storbinary("STOR MDAlarm_20261124-050000.jpg", io.BytesIO(BUS))
            return refused

        refused = await asyncio.to_thread(upload)
        assert refused.startswith("550") or refused.startswith("530") or refused.startswith("521")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"), 20)


def _raw_connect(port: int, source: str) -> tuple[socket.socket, str]:
    """A bare TCP connection from ``source`` (any 127.x address is this host): the first reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    first = b""
    while not first.endswith(b"\r\n") and (chunk := sock.recv(1)):
        first += chunk
    return sock, first.decode()


async def test_idle_connections_from_other_addresses_cannot_lock_out_a_camera(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    # The attack of issue 13 item 5: four LAN hosts open 16 idle connections each and never log
    # in. With the default limits each host gets its per-address share, the rest a 421, and
    # both a camera already logged in and one that connects now still upload.
    settings = _settings(make_settings, ftp_login_timeout_s=120)
    per_ip = 8  # the default ftp_max_connections_per_ip
    async with running(settings, pose_detector) as server:
        assert server.ftp is not None
        port = server.ftp.port

        def attack() -> tuple[dict[str, list[str]], list[socket.socket]]:
            replies: dict[str, list[str]] = {}
            held: list[socket.socket] = []
            for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
                for _ in range(16):
                    sock, first = _raw_connect(port, host)
                    held.append(sock)
                    replies.setdefault(host, []).append(first[:3])
            return replies, held

        def camera_uploads(logged_in: ftplib.FTP) -> None:
            logged_in.storbinary("STOR MDAlarm_20261124-060000.jpg", io.BytesIO(with_comment(BUS, "before")))
            with _client(server) as fresh:
                fresh.storbinary("STOR MDAlarm_20261124-060001.jpg", io.BytesIO(with_comment(BUS, "fresh")))

        before = await asyncio.to_thread(_client, server)
        replies, held = await asyncio.to_thread(attack)
        try:
            await asyncio.to_thread(camera_uploads, before)
        finally:
            before.close()
            for sock in held:
                sock.close()
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM images"), 20)
        names = sorted(r["original_name"] for r in await server.pool.fetch("SELECT original_name FROM images"))
        assert names == ["porch/MDAlarm_20261124-060000.jpg", "porch/MDAlarm_20261124-060001.jpg"]
        for codes in replies.values():
            assert codes == ["220"] * per_ip + ["421"] * (16 - per_ip)


async def test_a_connection_that_does_not_log_in_is_closed_at_the_login_deadline(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings, ftp_login_timeout_s=0.5)
    async with running(settings, pose_detector) as server:
        assert server.ftp is not None
        port = server.ftp.port

        def idle_then_check() -> tuple[bytes, float, str]:
            camera = _client(server)  # logs in well before the deadline
            sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
            started = time.monotonic()
            received = b""
            try:
                while chunk := sock.recv(4096):  # the idle timeout (300 s) would not end this
                    received += chunk
            except TimeoutError:
                received += b"(still open after 10 s)"
            elapsed = time.monotonic() - started
            sock.close()
            # The camera that logged in is past the deadline too, and still served.
            alive = camera.voidcmd("NOOP")
            camera.close()
            return received, elapsed, alive

        received, elapsed, alive = await asyncio.to_thread(idle_then_check)
        assert received == b"220 Home Security Intelligence ready.\r\n421 Login timed out.\r\n"
        assert elapsed < 10
        assert alive.startswith("200")


async def test_a_receiver_without_a_login_is_not_started_and_the_log_says_why(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, caplog: pytest.LogCaptureFixture
) -> None:
    """The add-on has FTP on by default and no login: a port every login is refused on is only
    attack surface (and pyftpdlib's memory), so none is opened until ``ftp_users`` has one."""
    caplog.set_level(logging.WARNING)
    async with running(_settings(make_settings, ftp_users=[]), pose_detector) as server:
        assert server.ftp is None
    [warning] = [r for r in caplog.records if r.name == "inference_server.server" and "ftp" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        "ftp receiver not started: ftp_enabled but no ftp_users (add a login for each camera)"
    )


def _wakeups(thread_id: int) -> int:
    """How often a thread of this process has gone to sleep and been woken (voluntarily)."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text(encoding="utf-8")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


async def test_an_idle_receiver_sleeps_until_a_client_comes_or_it_is_stopped(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """The FTP thread waits on its sockets and scheduled calls, not a 0.2 s poll (which woke it
    five times a second with nothing to do); ``stop`` wakes it at once."""
    async with running(_settings(make_settings), pose_detector) as server:
        receiver = server.ftp
        assert receiver is not None and receiver._thread is not None
        thread = receiver._thread
        assert thread.native_id is not None
        await asyncio.sleep(0.3)
        before = _wakeups(thread.native_id)
        await asyncio.sleep(1.5)
        assert _wakeups(thread.native_id) - before <= 1

        def upload() -> str:
            with _client(server) as ftp:
                return ftp.storbinary("STOR MDAlarm_20261124-070000.jpg", io.BytesIO(BUS))

        assert (await asyncio.to_thread(upload)).startswith("226")
        await asyncio.to_thread(receiver.stop)
        assert not thread.is_alive()


async def test_the_ftp_server_logs_its_start_once_and_sessions_below_info(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, caplog: pytest.LogCaptureFixture
) -> None:
    """A camera logs in for each picture it sends: at INFO the log says it is listening and that
    a camera logged in from an address the first time; each upload, and the same login again,
    at DEBUG (they were a line or two at INFO a picture)."""
    caplog.set_level(logging.DEBUG)
    settings = _settings(make_settings)
    async with running(settings, pose_detector) as server:

        def session(name: str) -> None:
            with _client(server) as ftp:
                ftp.storbinary(f"STOR {name}", io.BytesIO(BUS))

        await asyncio.to_thread(session, "MDAlarm_20261124-070000.jpg")
        await asyncio.to_thread(session, "MDAlarm_20261124-070001.jpg")
        await asyncio.sleep(1.2)  # pyftpdlib's loop had ~6 rounds of 0.2 s
    starts = [r for r in caplog.records if "starting" in r.getMessage() and "FTP" in r.getMessage()]
    assert len(starts) <= 1
    assert [
        r.getMessage() for r in caplog.records if r.name.startswith("pyftpdlib") and r.levelno >= logging.INFO
    ] == []
    ours = [r for r in caplog.records if r.name == "inference_server.ingest.ftp"]
    info = [r.getMessage() for r in ours if r.levelno >= logging.INFO]
    assert info[0].startswith("ftp receiver listening host=127.0.0.1 port=")
    assert info[1:] == ["ftp login user=porch remote=127.0.0.1"]
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    assert debug.count("ftp login user=porch remote=127.0.0.1") == 1
    assert sum(m.startswith("ftp upload received user=porch camera_id=porch file=") for m in debug) == 2


async def test_a_refused_resume_does_not_break_later_uploads_of_the_session(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings)
    async with running(settings, pose_detector) as server:

        def session() -> list[str]:
            names = [f"MDAlarm_20261124-08000{n}.jpg" for n in range(4)]
            with _client(server) as ftp:
                ftp.voidcmd("TYPE I")
                rests = (10, None, 10, None)
                return stor_replies(ftp, [(n, with_comment(BUS, n), r) for n, r in zip(names, rests, strict=True)])

        replies = await asyncio.to_thread(session)
        assert replies[0].startswith("502 REST (resume) is not supported")
        assert replies[1].startswith("226")
        assert replies[2].startswith("502 REST (resume) is not supported")
        assert replies[3].startswith("226")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM images"), 20)
        names = sorted(r["original_name"] for r in await server.pool.fetch("SELECT original_name FROM images"))
        assert names == ["porch/MDAlarm_20261124-080001.jpg", "porch/MDAlarm_20261124-080003.jpg"]


async def test_stor_onto_a_folder_name_is_refused_not_dropped(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _settings(make_settings)
    async with running(settings, pose_detector) as server:

        def session() -> list[str]:
            with _client(server) as ftp:
                ftp.mkd("2026")
                replies = stor_replies(ftp, [(name, BUS, None) for name in ("2026", ".", "/")])
                # A folder of that name appears while the file is on its way: the reply after
                # the data still says the file was not stored.
                data = ftp.transfercmd("STOR MDAlarm_20261124-090000.jpg")
                data.sendall(BUS)
                (settings.cameras_path / "porch" / "MDAlarm_20261124-090000.jpg").mkdir()
                data.close()
                try:
                    replies.append(ftp.voidresp())
                except ftplib.error_perm as err:
                    replies.append(str(err))
                replies.append(ftp.storbinary("STOR MDAlarm_20261124-090001.jpg", io.BytesIO(BUS)))
            return replies

        replies = await asyncio.to_thread(session)
        assert [r[:3] for r in replies] == ["550", "550", "550", "550", "226"]
        assert replies[0] == "550 A folder has that name; name the file."
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"), 20)
        assert await server.pool.fetchval("SELECT original_name FROM images") == "porch/MDAlarm_20261124-090001.jpg"
        # No partial or renamed copy was left anywhere, in the jail or above it.
        assert _files(settings.cameras_path) == []


def _self_signed(folder: Path) -> Path:
    cert, key = self_signed("hsi-test")
    path = folder / "ftps.pem"
    path.write_bytes(key + cert)
    return path

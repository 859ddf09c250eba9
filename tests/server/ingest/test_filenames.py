"""Camera file names: when the picture was taken, and which camera id a folder gets."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from inference_server.ingest.filenames import camera_id_for_folder, timestamp_from_name

UTC_ZONE = ZoneInfo("UTC")
CAMERA_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@pytest.mark.parametrize(
    ("name", "taken"),
    [
        pytest.param("MDAlarm_20160110-122532.jpg", datetime(2016, 1, 10, 12, 25, 32), id="foscam-motion"),
        pytest.param("Schedule_20160110-122532.jpg", datetime(2016, 1, 10, 12, 25, 32), id="foscam-schedule"),
        pytest.param("Front_00_20230101123456.jpg", datetime(2023, 1, 1, 12, 34, 56), id="reolink"),
        pytest.param(
            "192.168.1.64_01_20230101123456789_MOTION_DETECTION.jpg",
            datetime(2023, 1, 1, 12, 34, 56),
            id="hikvision-ip-and-milliseconds",
        ),
        pytest.param("2023-01-01T12-34-56.jpg", datetime(2023, 1, 1, 12, 34, 56), id="iso-like"),
        pytest.param("IMG_20240229_235959.jpg", datetime(2024, 2, 29, 23, 59, 59), id="leap-day"),
    ],
)
def test_camera_file_names_give_the_capture_time(name: str, taken: datetime) -> None:
    assert timestamp_from_name(name, UTC_ZONE) == taken.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "name",
    [
        "snapshot.jpg",
        "cam1.jpg",
        "DSC_1234.jpg",
        "MDAlarm_20231345-250000.jpg",  # month 13, hour 25
        "Schedule_20230230-120000.jpg",  # 30 February
        "12345678901234.jpg",  # year 1234 is no camera's clock
        "120230101123456.jpg",  # a timestamp glued to a longer number is not one
    ],
)
def test_names_without_a_valid_timestamp_give_none(name: str) -> None:
    assert timestamp_from_name(name, UTC_ZONE) is None


def test_an_invalid_date_is_skipped_for_the_next_valid_one() -> None:
    name = "clip_20231345-250000_20230101-120000.jpg"
    assert timestamp_from_name(name, UTC_ZONE) == datetime(2023, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "name", "utc"),
    [
        ("Europe/Berlin", "MDAlarm_20230115-120000.jpg", datetime(2023, 1, 15, 11, 0, 0, tzinfo=UTC)),
        ("Europe/Berlin", "MDAlarm_20230715-120000.jpg", datetime(2023, 7, 15, 10, 0, 0, tzinfo=UTC)),
        ("America/New_York", "Front_00_20231231230000.jpg", datetime(2024, 1, 1, 4, 0, 0, tzinfo=UTC)),
    ],
)
def test_timestamps_are_read_in_the_cameras_time_zone(zone: str, name: str, utc: datetime) -> None:
    taken = timestamp_from_name(name, ZoneInfo(zone))
    assert taken is not None
    assert taken.astimezone(UTC) == utc


@pytest.mark.parametrize(
    ("folder", "camera_id"),
    [
        ("Front Door", "front_door"),
        ("  Garage  ", "garage"),
        ("Back-Yard 2", "back-yard_2"),
        ("front_door", "front_door"),
        ("Café Terrasse", "caf_terrasse"),
        (".hidden", "hidden"),
        ("-porch-", "porch"),
    ],
)
def test_folder_names_become_readable_camera_ids(folder: str, camera_id: str) -> None:
    assert camera_id_for_folder(folder) == camera_id


@pytest.mark.parametrize("folder", ["门口", "后院", "", "___", "   ", "🚪"])
def test_folders_with_nothing_to_slug_get_a_stable_hashed_id(folder: str) -> None:
    camera_id = camera_id_for_folder(folder)
    assert CAMERA_ID.match(camera_id)
    assert camera_id.startswith("camera_")
    assert camera_id_for_folder(folder) == camera_id


def test_hashed_ids_differ_between_folders() -> None:
    assert camera_id_for_folder("门口") != camera_id_for_folder("后院")


@pytest.mark.parametrize(
    "folder",
    [
        "A" * 300,
        "Ünïcödé Kämera",
        "x" + "_" * 100 + "y",
        "camera with\nnewline",
        "surrogate \udcff bytes",
        "9" * 70,
        "Front Door " + "é" * 80,
    ],
)
def test_every_folder_name_gives_an_id_the_database_accepts(folder: str) -> None:
    camera_id = camera_id_for_folder(folder)
    assert len(camera_id) <= 64
    assert CAMERA_ID.match(camera_id)

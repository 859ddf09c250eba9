"""The snapshot camera: serves the retained JPEG the server publishes."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message

from .conftest import JPEG, camera_online


async def test_snapshot_camera_serves_the_retained_jpeg(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    from homeassistant.components.camera import async_get_image

    await camera_online(hass)
    async_fire_mqtt_message(hass, "hsi/cameras/back_door/snapshot", JPEG)
    await hass.async_block_till_done()
    image = await async_get_image(hass, "camera.back_door_latest_detection")
    assert image.content == JPEG and image.content_type == "image/jpeg"

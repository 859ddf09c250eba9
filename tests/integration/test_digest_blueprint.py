"""The digest blueprint: one notification per digest the server publishes (hsi/digest), the
LLM's prose labelled as such, quiet periods skipped when asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from homeassistant.components import automation
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_mock_service,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import JPEG, URL, sample

BLUEPRINT = (
    Path(__file__).resolve().parents[2]
    / "blueprints"
    / "automation"
    / "home_security_intelligence"
    / "notify_digest.yaml"
)
EVENT_ID = "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
#: A digest as the server publishes it (schemas.Digest; the rules text, no LLM).
DIGEST: dict[str, Any] = {
    "id": 7,
    "kind": "scheduled",
    "period_start": "2025-06-01T20:00:00Z",
    "period_end": "2025-06-02T05:00:00Z",
    "title": "Security digest, Sun 01 Jun 22:00 – Mon 02 Jun 07:00",
    "text": "Sun 01 Jun 22:00 – Mon 02 Jun 07:00: 2 events (1 critical, 1 low).\nBy camera: Back yard 2.",
    "text_source": "rules",
    "rules_text": "Sun 01 Jun 22:00 – Mon 02 Jun 07:00: 2 events (1 critical, 1 low).\nBy camera: Back yard 2.",
    "llm_text": None,
    "llm_error": None,
    "model": None,
    "total": 2,
    "by_level": {"low": 1, "medium": 0, "high": 0, "critical": 1},
    "top": [
        {
            "id": EVENT_ID,
            "camera_id": "yard",
            "camera_name": "Back yard",
            "started_at": "2025-06-02T00:14:00Z",
            "local_time": "02:14",
            "risk_level": "critical",
            "risk_score": 92,
            "summary": "Person at the shed",
            "snapshot_url": f"/api/v1/events/{EVENT_ID}/snapshot.jpg",
        }
    ],
    "generated_at": "2025-06-02T05:00:01Z",
}


def _install(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(BLUEPRINT, target / BLUEPRINT.name)


async def _set_up(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker, **inputs: Any) -> None:
    await hass.async_add_executor_job(
        _install, Path(hass.config.path("blueprints/automation/home_security_intelligence"))
    )
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(f"{URL}/api/v1/cameras", json={"cameras": []})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": "k", "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    blueprint = {"path": f"home_security_intelligence/{BLUEPRINT.name}", "input": inputs}
    assert await async_setup_component(hass, automation.DOMAIN, {automation.DOMAIN: {"use_blueprint": blueprint}})
    await hass.async_block_till_done()


def entry_id(hass: HomeAssistant) -> str:
    return hass.config_entries.async_entries(DOMAIN)[0].entry_id


async def test_a_digest_becomes_one_phone_notification_with_the_top_events_snapshot(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker, hass_client_no_auth: Any
) -> None:
    await _set_up(hass, aioclient_mock, notification_kind="notify", notify_service="notify.phone")
    phone = async_mock_service(hass, "notify", "phone")
    async_fire_mqtt_message(hass, "hsi/digest", json.dumps(DIGEST))
    await hass.async_block_till_done()
    assert len(phone) == 1
    sent = phone[0].data
    assert sent["title"] == DIGEST["title"]
    assert sent["message"] == DIGEST["text"]
    # The picture comes through Home Assistant on a signed path: no HSI key, no login on the phone.
    image = sent["data"]["image"]
    assert image.startswith(f"/api/home_security_intelligence/{entry_id(hass)}/events/{EVENT_ID}/snapshot.jpg?authSig=")
    assert sent["data"] == {
        "tag": "hsi-digest-hsi-scheduled",
        "group": "home-security-intelligence",
        "image": image,
        "url": image,
        "clickAction": image,
    }
    aioclient_mock.get(
        f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    phone_app = await hass_client_no_auth()
    resp = await phone_app.get(image)
    assert resp.status == 200 and await resp.read() == JPEG
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == "Bearer k"  # the server's key stays in HA
    assert (await phone_app.get(image.split("?")[0])).status == 401  # unsigned: Home Assistant's login needed

    prose = {**DIGEST, "text": "A calm night; a person at the shed at 02:14 (critical).", "text_source": "llm"}
    async_fire_mqtt_message(hass, "hsi/digest", json.dumps(prose | {"model": "qwen2.5-3b"}))
    await hass.async_block_till_done()
    assert phone[1].data["message"] == (
        "A calm night; a person at the shed at 02:14 (critical).\n(Written by qwen2.5-3b.)"
    )


async def test_quiet_nights_can_be_skipped_and_persistent_notifications_used(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    await _set_up(hass, aioclient_mock, notification_kind="persistent_notification", skip_quiet=True)
    created = async_mock_service(hass, "persistent_notification", "create")
    quiet = {**DIGEST, "total": 0, "top": [], "text": "Sun 01 Jun 22:00 – Mon 02 Jun 07:00: no events."}
    async_fire_mqtt_message(hass, "hsi/digest", json.dumps(quiet))
    await hass.async_block_till_done()
    assert created == []
    async_fire_mqtt_message(hass, "hsi/digest", json.dumps(DIGEST))
    await hass.async_block_till_done()
    assert [(c.data["title"], c.data["notification_id"]) for c in created] == [
        (DIGEST["title"], "hsi-digest-hsi-scheduled")
    ]
    # The sidebar shows the most important event's snapshot, through Home Assistant.
    message = created[0].data["message"]
    text, picture = message.split("\n\n")
    assert text == DIGEST["text"]
    path = f"/api/home_security_intelligence/{entry_id(hass)}/events/{EVENT_ID}/snapshot.jpg?authSig="
    assert picture.startswith(f"![Back yard, 02:14]({path}") and picture.endswith(")")

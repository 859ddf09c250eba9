from __future__ import annotations

from pathlib import Path

from inference_server.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [
        name for name in Settings.model_fields if f"`{name}`" not in text and f"`HSI_{name.upper()}`" not in text
    ]
    assert missing == []

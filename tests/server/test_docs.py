from __future__ import annotations

from pathlib import Path

import inference_server
from inference_server.comms.topics import Topics
from inference_server.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACKAGE = Path(inference_server.__file__).resolve().parent


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [
        name for name in Settings.model_fields if f"`{name}`" not in text and f"`HSI_{name.upper()}`" not in text
    ]
    assert missing == []


def _row(text: str, name: str) -> str:
    """The line of the packages table of docs/architecture.md that starts with ``name``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| `{name}")]
    assert rows, f"no row for {name} in docs/architecture.md"
    return rows[0]


def test_architecture_names_every_package_and_module() -> None:
    # docs/architecture.md describes the tree as it is: each package's row names its modules,
    # and every top-level module has a mention.
    text = (DOCS / "architecture.md").read_text()
    missing = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        package = init.parent
        row = _row(text, f"{package.name}/")
        missing += [
            f"{package.name}/{module.relative_to(package)}"
            for module in sorted(package.rglob("*.py"))
            if module.stem != "__init__" and f"`{module.stem}" not in row
        ]
    missing += [module.name for module in sorted(PACKAGE.glob("*.py")) if f"`{module.name}`" not in text]
    assert [m for m in missing if m != "__init__.py"] == []


def test_architecture_lists_every_mqtt_topic() -> None:
    text = (DOCS / "architecture.md").read_text()
    topics = Topics("hsi")
    names = [
        topics.availability,
        topics.discovery,
        topics.status,
        topics.events,
        topics.digest,
        topics.camera_state("<id>"),
        topics.camera_snapshot("<id>"),
        topics.camera_tamper("<id>"),
        topics.camera_objects("<id>", "<label>"),
        topics.ingest("<id>"),
    ]
    assert [name for name in names if f"| `{name}` |" not in text] == []

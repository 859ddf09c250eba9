"""What every bench script shares: a process's CPU read from /proc, and at the end: print, write
the figures as JSON, exit non-zero on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | str) -> float:
    """A process's CPU seconds so far, user and system (``/proc/<pid>/stat``; ``"self"``: this one)."""
    fields = Path(f"/proc/{pid}/stat").read_text()
    rest = fields[fields.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def say(text: str = "") -> None:
    print(text, flush=True)


def finish(figures: dict[str, Any], json_path: Path | None, failure: str) -> int:
    """Write ``figures`` to ``json_path`` (if given); 1 with ``failure`` said when not ``figures["ok"]``."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        say(f"figures written to {json_path}")
    if not figures["ok"]:
        say(failure)
        return 1
    return 0


def show(figures: dict[str, Any], json_path: Path | None, printed: dict[str, Any] | None = None) -> None:
    """Print ``printed`` (by default ``figures``) as JSON; write ``figures`` to ``json_path`` if given."""
    print(json.dumps(figures if printed is None else printed, indent=2, default=str), flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")


def child_json(code: str, *args: str, cwd: Path) -> Any:
    """Run ``code`` in a fresh interpreter (``python -c``, as the server would be: nothing this
    process imported or allocated) with ``args``; its last line of output, read as JSON, or None
    when it failed (the end of its error output printed)."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.splitlines()[-1])


def temporary_folder() -> Path:
    """A new empty folder under the system's temporary directory (left for the OS to clean)."""
    return Path(tempfile.mkdtemp(prefix="hsi-bench-"))

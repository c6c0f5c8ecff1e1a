"""A non-editable install ships the DeepSpeed JSONs: `llmft/deepspeed_configs` (a symlink to the
top-level `deepspeed_configs/`) becomes real files in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_deepspeed_configs(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "llmft", source / "llmft", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "deepspeed_configs", source / "deepspeed_configs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("llmft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"llmft/deepspeed_configs/{p.name}" for p in (REPO / "deepspeed_configs").glob("*.json")}
    assert len(expected) == 5 and expected <= names
    assert "llmft/launch/deepspeed.py" in names

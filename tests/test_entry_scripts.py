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


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("policy_optimization.sh", "usage: bash policy_optimization.sh"),
        ("evaluate.sh", "usage: bash evaluate.sh"),
    ],
)
def test_help_prints_usage_and_starts_nothing(tmp_path, script, expected):
    # PYTHON points at a missing interpreter: --help must not install, train or evaluate anything
    r = subprocess.run(
        ["bash", script, "--help"],
        cwd=REPO,
        env={**os.environ, "PYTHON": str(tmp_path / "no-python"), "IGPO_ENGINE": "local"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith(expected)
    for words in (
        "IGPO_ENGINE",
        "local",
        "verl",
        "IGPO_VAL_FILES" if script == "evaluate.sh" else "HANDLER_URL",
    ):
        assert words in r.stdout
    assert "experiment=" in r.stdout  # override examples


def test_dry_run_refuses_a_bad_igpo_value(tmp_path):
    r = subprocess.run(
        ["bash", "policy_optimization.sh", "--dry-run", "algorithm.igpo.reward_mode=bogus"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "algorithm.igpo.reward_mode='bogus' is not allowed" in r.stderr


def fake_install(tmp_path: Path, index_answers: bool, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """Run scripts/install.sh with a fake interpreter: no torch, the CPU index (un)reachable; returns
    (the pip command lines it ran, stderr)."""
    log = tmp_path / "calls.log"
    py = tmp_path / "python"
    py.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *"import torch"*) exit 1 ;;\n'
        f"  *urlopen*) exit {0 if index_answers else 1} ;;\n"
        f'  *"-m pip"*) echo "$*" >> {log}; exit 0 ;;\n'
        "esac\nexit 3\n"
    )
    py.chmod(0o755)
    r = subprocess.run(
        ["bash", "scripts/install.sh", *extra],
        cwd=REPO,
        env={**os.environ, "PYTHON": str(py)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return log.read_text(), r.stderr


def test_install_takes_torch_from_the_cpu_wheel_index(tmp_path):
    calls, err = fake_install(tmp_path, index_answers=True)
    first, second = calls.splitlines()
    assert first == "-m pip install -q --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
    assert second == "-m pip install -q -e ." and err == ""


def test_install_falls_back_with_one_line_when_the_cpu_index_does_not_answer(tmp_path):
    calls, err = fake_install(tmp_path, index_answers=False)
    assert calls.splitlines()[0] == "-m pip install -q torch==2.13.0"
    assert len(err.splitlines()) == 1 and "download.pytorch.org/whl/cpu did not answer" in err


def test_install_for_gpus_leaves_torch_to_the_gpu_extra(tmp_path):
    calls, _ = fake_install(tmp_path, index_answers=True, extra=("--gpu",))
    assert calls.splitlines() == ["-m pip install -q -e .[gpu]"]

"""The README's N-node example, composed exactly as written there (dry run, no GPU, no Ray)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from igpo.verl.search_tool import _urls

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> tuple[dict[str, str], list[str]]:
    """(exported environment, overrides of the training command) of README's multinode block."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- multinode-example.*?-->\n```bash\n(.*?)```\n<!-- /multinode-example -->", text, re.S)
    assert m, "README.md lost its multinode-example block"
    lines = m.group(1).replace("\\\n", " ").splitlines()
    env: dict[str, str] = {}
    overrides: list[str] | None = None
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:])
        elif "policy_optimization.sh" in words:
            overrides = words[words.index("policy_optimization.sh") + 1 :]
    assert overrides, "no `bash policy_optimization.sh ...` line in the multinode block"
    return env, overrides


def test_readme_multinode_example_composes_to_two_nodes_and_both_handlers(tmp_path, monkeypatch):
    env, overrides = readme_example()
    # what `bash policy_optimization.sh --dry-run OVERRIDES` runs
    r = subprocess.run(
        [sys.executable, "-m", "igpo.verl.main", "--dry-run", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["trainer"]["nnodes"] == 2 and cfg["trainer"]["n_gpus_per_node"] == 8
    assert cfg["trainer"]["default_local_dir"] == "/shared/igpo/checkpoints/2x8"
    # the tool config the agent-loop workers load, with the environment every node exports
    for k, v in env.items():  # oc.env reads the process environment
        monkeypatch.setenv(k, v)
    tool_path = REPO / cfg["actor_rollout_ref"]["rollout"]["multi_turn"]["tool_config_path"]
    tools = OmegaConf.to_container(OmegaConf.load(tool_path), resolve=True)
    urls = {tuple(_urls(t["config"]["handler_urls"])) for t in tools["tools"]}
    assert urls == {("http://10.0.0.1:8000", "http://10.0.0.2:8000")}

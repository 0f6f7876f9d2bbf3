"""scripts/gpu_check.sh: its CPU mode end to end (the GPU mode's shared code path), and that its
exactness check catches a copy that sees the wrong keys."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict:
    # only the source tree on the path, as on a GPU node where the wheels are not installed
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_cpu_mode_writes_report_and_table(tmp_path):
    out = tmp_path / "report.json"
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["mode"] == "cpu" and rep["model"]["num_key_value_heads"] < rep["model"]["num_attention_heads"]
    ex = {(r["dtype"], r["turns"]): r for r in rep["exactness"]}
    assert set(ex) == {(d, t) for d in ("float32", "bfloat16") for t in (1, 5, 10)}
    assert rep["exactness_ok"] and all(r["ok"] for r in ex.values())
    assert all(r["tolerance"] == 1e-4 for (d, _), r in ex.items() if d == "float32")
    for t in (5, 10):  # the check can tell a layout error: turn-to-turn spread far above the bound
        assert ex[("bfloat16", t)]["signal"] > 3 * ex[("bfloat16", t)]["tolerance"]
    speed = rep["speed"]
    assert [r["seq_len"] for r in speed] == [128, 256] and all(r["turns"] == 10 for r in speed)
    for r in speed:
        for m in ("plain", "vectorized", "naive"):
            assert r[f"{m}_runs"] == 2 and 0 < r[f"{m}_ms_min"] <= r[f"{m}_ms_median"]
        assert r["vectorized_over_plain_time"] > 0
    calls = rep["backends"]["calls"]
    assert set(calls) == {"trajectory", "copies"}
    for v in calls.values():
        assert v["forced"]["MATH"] == "ok" and v["dispatched"]
        assert all(v["forced"][b] == "ok" for b in v["dispatched"])  # what torch picks runs when forced
    assert rep["backends"]["model_forward"]["vectorized"]
    assert "answer max|vec-naive|" in res.stdout and "exactness ok: True" in res.stdout


def test_exactness_check_fails_when_copies_see_the_whole_block(monkeypatch):
    gc = _load_gpu_check()
    from igpo.info_gain import CopyLayout

    def leaky(self, i, device="cpu"):  # every copy token sees every key of its block: a layout bug
        c = self.block_len(i) - self.seq_lens[i]
        return torch.ones(c, self.block_len(i), dtype=torch.bool, device=device)

    monkeypatch.setattr(CopyLayout, "copy_mask", leaky)
    model = gc.build_model("tiny", 2, torch.device("cpu"), torch.float32)
    rows = gc.check_exactness(model, gc.SHAPES["tiny"]["vocab_size"], (32, 48), torch.device("cpu"))
    bad = {(r["dtype"], r["turns"]) for r in rows if not r["ok"]}
    assert {("float32", 5), ("float32", 10), ("bfloat16", 5), ("bfloat16", 10)} <= bad


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_mode_without_cuda_says_so():
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True, env=_env()
    )
    assert res.returncode == 2 and "no CUDA device" in res.stderr and "--cpu" in res.stderr

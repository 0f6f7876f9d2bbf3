"""Trained weights out: ``python -m igpo.verl.export CKPT/global_step_N OUT [--tokenizer DIR]``.

Turns a verl FSDP checkpoint of an IGPO run (``checkpoints/PROJECT/EXPERIMENT/global_step_N``) into a
plain Hugging Face model folder with verl's own model merger (``python -m verl.model_merger merge
--backend fsdp``), then loads the result with ``transformers`` and generates a few tokens, so a broken
export fails here and not in someone's evaluation. ``--tokenizer DIR`` replaces the tokenizer files
verl wrote with those of ``DIR``: needed when the run used a separate tokenizer folder
(``actor_rollout_ref.model.tokenizer_path``, as the CPU test bed does); a model that ships its own
tokenizer (Qwen2.5) needs nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from igpo.local.tiny_policy import TOKENIZER_FILES, copy_tokenizer


class ExportError(RuntimeError):
    """The checkpoint could not be exported; the message names the path and what to do."""


def actor_dir(checkpoint: str | Path) -> Path:
    """``global_step_N/actor`` of a checkpoint given as ``global_step_N`` or its ``actor`` folder."""
    path = Path(checkpoint)
    for candidate in (path, path / "actor"):
        if any(candidate.glob("model_world_size_*_rank_*.pt")):
            return candidate
    raise ExportError(
        f"{path} holds no verl FSDP checkpoint (no model_world_size_*_rank_*.pt in it or in its actor/); "
        "pass checkpoints/PROJECT/EXPERIMENT/global_step_N"
    )


def export(checkpoint: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Merge the FSDP shards into ``out`` (Hugging Face layout) and check that it loads and generates."""
    src, out = actor_dir(checkpoint), Path(out)
    cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    r = subprocess.run(
        [*cmd, "--local_dir", str(src), "--target_dir", str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if r.returncode != 0:
        raise ExportError(f"verl's model merger failed on {src}:\n{r.stderr[-2000:]}")
    if tokenizer is not None:
        if not copy_tokenizer(tokenizer, out):
            raise ExportError(f"--tokenizer {tokenizer} holds none of {TOKENIZER_FILES}")
    check_loads(out)
    return out


def check_loads(path: Path) -> str:
    """Load ``path`` with transformers and greedily generate 8 tokens; returns the text."""
    import torch

    from igpo.local.tiny_policy import load_policy

    model, tok = load_policy(path)
    ids = tok("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    return tok.decode(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m igpo.verl.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoints/PROJECT/EXPERIMENT/global_step_N (or its actor/ folder)")
    ap.add_argument("out", help="folder for the Hugging Face model")
    ap.add_argument("--tokenizer", help="a tokenizer folder to ship instead of the one verl saved")
    args = ap.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.tokenizer)
    except ExportError as e:
        print(f"igpo.verl.export: {e}", file=sys.stderr)
        return 2
    print(f"[igpo] exported {args.checkpoint} to {out} (loads with transformers and generates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The warm-up benchmark's copy accuracy, against policies whose predictions are known."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from igpo.rollout import Episode

spec = importlib.util.spec_from_file_location(
    "bench_warmup", Path(__file__).resolve().parents[2] / "scripts" / "bench_warmup.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

PAD, ANSWER, NAMES = 0, 9, {20, 21, 22, 23}


class Oracle(torch.nn.Module):
    """Predicts the true next token of the sequences it knows, except at the positions in ``wrong``."""

    def __init__(self, sequences, wrong=()):
        super().__init__()
        self.next = {tuple(s): s[1:] + [PAD] for s in sequences}
        self.wrong = set(wrong)

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, 30)
        for i, row in enumerate(input_ids.tolist()):
            n = int(attention_mask[i].sum())
            for p, t in enumerate(self.next[tuple(row[:n])]):
                logits[i, p, PAD if (i, p) in self.wrong else t] = 1.0
        return SimpleNamespace(logits=logits)


def episode(prompt, response, mask):
    return Episode(prompt, response, mask, None, [], "", 1)


def engine_for(policy):
    tok = SimpleNamespace(pad_token_id=PAD, convert_tokens_to_ids=lambda t: {"<answer>": ANSWER}[t])
    return SimpleNamespace(tokenizer=tok, policy=policy)


def test_copy_accuracy_counts_answers_and_query_names():
    # prompt [1 2 20]; response: query name 20 (model), tool text with 21 (mask 0), answer tag, name 21
    eps = [
        episode([1, 2, 20], [5, 20, 6, 21, 7, ANSWER, 21, 8], [1, 1, 1, 0, 0, 1, 1, 1]),
        episode([1, 3, 22], [5, 22, 6, 23, 7, ANSWER, 23, 8], [1, 1, 1, 0, 0, 1, 1, 1]),
    ]
    seqs = [e.prompt_ids + e.response_ids for e in eps]
    assert bench.copy_accuracy(engine_for(Oracle(seqs)), eps, NAMES) == (1.0, 1.0)
    # wrong answer in episode 1: logits at position 2 + 6 predict its answer name
    assert bench.copy_accuracy(engine_for(Oracle(seqs, wrong={(1, 8)})), eps, NAMES) == (0.5, 1.0)
    # wrong query name in episode 0 (logits at 2 + 1); the tool text's name (mask 0) is never scored
    assert bench.copy_accuracy(engine_for(Oracle(seqs, wrong={(0, 3), (0, 5)})), eps, NAMES) == (1.0, 0.5)


@pytest.mark.parametrize(("flag", "value"), [("--every", "0"), ("--probe-size", "-3"), ("--every", "ten")])
def test_bad_probe_settings_are_refused_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err and "expected an integer >= 1" in err

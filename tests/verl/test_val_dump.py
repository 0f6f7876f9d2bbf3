"""verl's validation dump → our rollout JSON."""

import json

import pandas as pd
import pytest

from igpo.verl.val_dump import convert, main, question_index


@pytest.fixture
def val_parquet(tmp_path):
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "who wrote hamlet?"},
            ],
            "data_source": "nq",
            "reward_model": {"style": "rule", "ground_truth": ["Shakespeare", "William Shakespeare"]},
        },
        {
            "prompt": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "who wrote hamlet? (film)"},
            ],
            "data_source": "popqa",
            "reward_model": {"style": "rule", "ground_truth": ["Kenneth Branagh"]},
        },
    ]
    path = tmp_path / "val.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def dump_line(question, output, step=3):
    prompt = (
        f"<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    return json.dumps({"input": prompt, "output": output, "gts": "x", "score": 0.5, "step": step, "f1": 0.5})


def test_convert_recovers_source_gold_and_counts(tmp_path, val_parquet):
    out1 = (
        '<think>a</think><tool_call>{"name": "search", "arguments": {"query": ["x"]}}</tool_call>'
        "<tool_response>d</tool_response><think>b</think><answer>William Shakespeare</answer>"
    )
    dump = tmp_path / "3.jsonl"
    dump.write_text(
        dump_line("who wrote hamlet?", out1) + "\n" + dump_line("who wrote hamlet? (film)", "no tags") + "\n"
    )
    recs = convert(dump, question_index([val_parquet]))
    assert [r["data_source"] for r in recs] == ["nq", "popqa"]  # the longer matching question wins
    assert recs[0]["ground_truth"] == ["Shakespeare", "William Shakespeare"]
    assert recs[0]["prediction"] == "William Shakespeare" and recs[1]["prediction"] is None
    assert (recs[0]["turns"], recs[0]["tool_calls"]) == (2, 1)
    assert main([str(dump), "--val-files", str(val_parquet), "--out-dir", str(tmp_path / "r")]) == 0
    written = json.loads((tmp_path / "r" / "rollout_step_3.json").read_text())
    assert len(written) == 2 and written[0]["question"] == "who wrote hamlet?"


def test_bad_lines_are_named(tmp_path, val_parquet):
    idx = question_index([val_parquet])
    dump = tmp_path / "1.jsonl"
    dump.write_text(dump_line("who wrote hamlet?", "x") + "\n{not json\n")
    with pytest.raises(ValueError, match=r"1.jsonl:2: not JSON"):
        convert(dump, idx)
    dump.write_text(dump_line("an unknown question", "x") + "\n")
    with pytest.raises(ValueError, match=r"1.jsonl:1: its prompt matches no question"):
        convert(dump, idx)
    assert main([str(dump), "--val-files", str(val_parquet)]) == 2

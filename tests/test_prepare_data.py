"""Tests for scripts/prepare_data.py: every input format, bad rows, data sources, dedup, sampling, overlap."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from igpo.prompts import build_prompt

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
prep = importlib.util.module_from_spec(_spec)
sys.modules["prepare_data"] = prep
_spec.loader.exec_module(prep)

TODAY = "2025-01-01"


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _load(paths, **kw):
    kw.setdefault("progress", False)
    return prep.load_examples([str(p) for p in paths], **kw)


def _read_rows(path: Path) -> list[dict]:
    return pd.read_parquet(path).to_dict(orient="records")


# ------------------------------------------------------------------------------------------ input formats


def test_flashrag_jsonl_source_from_folder(tmp_path):
    f = _jsonl(
        tmp_path / "hotpotqa" / "dev.jsonl",
        [
            {
                "id": "h1",
                "question": "Who wrote Hamlet?",
                "golden_answers": ["Shakespeare", "W. Shakespeare"],
            },
            {"id": "h2", "question": " Capital of France? ", "golden_answers": ["Paris"], "metadata": {}},
        ],
    )
    exs = _load([f])
    assert [(e.question, e.golds, e.data_source, e.orig_id) for e in exs] == [
        ("Who wrote Hamlet?", ["Shakespeare", "W. Shakespeare"], "hotpotqa", "h1"),
        ("Capital of France?", ["Paris"], "hotpotqa", "h2"),
    ]
    assert exs[1].where == "line 2"


def test_search_r1_parquet(tmp_path):
    template = "Answer the given question. ... For example, <answer> Beijing </answer>. Question: {q}\n"
    df = pd.DataFrame(
        [
            {
                "data_source": "nq",
                "prompt": [{"role": "user", "content": template.format(q="who sang thriller?")}],
                "ability": "fact-reasoning",
                "reward_model": {"style": "rule", "ground_truth": {"target": ["Michael Jackson"]}},
                "extra_info": {"split": "train", "index": 0},
            },
            {
                "data_source": "hotpotqa",
                "prompt": [{"role": "user", "content": template.format(q="where is the eiffel tower?")}],
                "ability": "fact-reasoning",
                "reward_model": {"style": "rule", "ground_truth": {"target": ["Paris", "Paris, France"]}},
                "extra_info": {"split": "train", "index": 1},
            },
        ]
    )
    f = tmp_path / "train.parquet"
    df.to_parquet(f)
    exs = _load([f])
    assert [(e.question, e.golds, e.data_source, e.where) for e in exs] == [
        ("who sang thriller?", ["Michael Jackson"], "nq", "row 0"),
        ("where is the eiffel tower?", ["Paris", "Paris, France"], "hotpotqa", "row 1"),
    ]


def test_search_r1_parquet_with_question_column(tmp_path):
    df = pd.DataFrame(
        [
            {
                "id": "train_0",
                "question": "total number of death row inmates in the us?",
                "golden_answers": ["2,718"],
                "data_source": "nq",
                "prompt": [{"role": "user", "content": "long template ... Question: total number ...?"}],
                "reward_model": {"style": "rule", "ground_truth": {"target": ["2,718"]}},
            }
        ]
    )
    f = tmp_path / "x.parquet"
    df.to_parquet(f)
    (ex,) = _load([f])
    assert (ex.question, ex.golds, ex.data_source, ex.orig_id) == (
        "total number of death row inmates in the us?",
        ["2,718"],
        "nq",
        "train_0",
    )


def test_deepresearcher_parquet_answer_split(tmp_path):
    df = pd.DataFrame(
        [
            {
                "data_source": "2wiki",
                "prompt": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "Who directed Jaws?"},
                ],
                "reward_model": {
                    "style": "rule",
                    "ground_truth": "Steven Spielberg<|answer_split|>Spielberg",
                },
                "extra_info": {"index": 3},
            },
            {
                "data_source": "my_custom_set",
                "prompt": [{"role": "user", "content": "Is water wet?"}],
                "reward_model": {"style": "rule", "ground_truth": "yes"},
                "extra_info": {"index": 4},
            },
        ]
    )
    f = tmp_path / "dr_train.parquet"
    df.to_parquet(f)
    exs = _load([f])
    assert [(e.question, e.golds, e.data_source) for e in exs] == [
        ("Who directed Jaws?", ["Steven Spielberg", "Spielberg"], "2wikimultihopqa"),
        ("Is water wet?", ["yes"], "my_custom_set"),  # unknown names in the row are kept as they are
    ]


def test_plain_jsonl_json_csv_tsv(tmp_path):
    j = _jsonl(
        tmp_path / "popqa_test.jsonl", [{"query": "Q1?", "answer": "A1"}, {"q": "Q2?", "answers": [1984]}]
    )
    arr = tmp_path / "bamboogle.json"
    arr.write_text(json.dumps([{"question": "Q3?", "answer": ["A3", "a three"]}]), encoding="utf-8")
    c = tmp_path / "musique.csv"
    c.write_text('question,answers\nQ4?,"[""A4"", ""A four""]"\n"Q5, with comma?",A5\n', encoding="utf-8")
    t = tmp_path / "triviaqa.tsv"
    t.write_text("question\tanswer\nQ6?\tA6|A six\n", encoding="utf-8")
    exs = _load([j, arr, c])
    assert [(e.question, e.golds, e.data_source) for e in exs] == [
        ("Q1?", ["A1"], "popqa"),
        ("Q2?", ["1984"], "popqa"),
        ("Q3?", ["A3", "a three"], "bamboogle"),
        ("Q4?", ["A4", "A four"], "musique"),
        ("Q5, with comma?", ["A5"], "musique"),
    ]
    (e6,) = _load([t], answer_sep="|")
    assert (e6.question, e6.golds, e6.data_source) == ("Q6?", ["A6", "A six"], "triviaqa")
    (e6b,) = _load([t])  # without --answer-sep the cell is one alias
    assert e6b.golds == ["A6|A six"]


def test_explicit_fields(tmp_path):
    f = _jsonl(tmp_path / "nq.jsonl", [{"text": "Q?", "label": ["L"], "question": "ignored"}])
    (ex,) = _load([f], question_field="text", answer_field="label")
    assert (ex.question, ex.golds) == ("Q?", ["L"])
    with pytest.raises(prep.DataError, match="no field 'nope'"):
        _load([f], question_field="nope")


# --------------------------------------------------------------------------------------- data sources


@pytest.mark.parametrize(
    "name, canon",
    [
        ("NQ", "nq"),
        ("natural_questions", "nq"),
        ("TriviaQA", "triviaqa"),
        ("tq", "triviaqa"),
        ("hotpot_qa", "hotpotqa"),
        ("2WikiMultihopQA", "2wikimultihopqa"),
        ("2wiki", "2wikimultihopqa"),
        ("MuSiQue", "musique"),
        ("bamboogle", "bamboogle"),
        ("PopQA", "popqa"),
        ("triviaqa_dev", "triviaqa"),
        ("squad", None),
        ("train", None),
    ],
)
def test_canonical_source(name, canon):
    assert prep.canonical_source(name) == canon


def test_source_inference_and_override(tmp_path):
    f = _jsonl(tmp_path / "data" / "test.jsonl", [{"question": "Q?", "golden_answers": ["A"]}])
    with pytest.raises(prep.DataError, match=r"test\.jsonl: cannot tell the dataset.*--data-source"):
        _load([f])
    assert _load([f], data_source="2Wiki")[0].data_source == "2wikimultihopqa"
    assert _load([f], data_source="mine")[0].data_source == "mine"
    g = _jsonl(
        tmp_path / "nq_test.jsonl", [{"question": "Q?", "golden_answers": ["A"], "data_source": "musique"}]
    )
    assert _load([g])[0].data_source == "musique"  # the row's own data_source wins over the file name
    assert _load([g], data_source="popqa")[0].data_source == "popqa"  # the override wins over both


# -------------------------------------------------------------------------------------------- bad rows


def test_bad_rows_error_names_file_line_field(tmp_path):
    f = _jsonl(
        tmp_path / "nq" / "test.jsonl",
        [
            {"question": "ok?", "golden_answers": ["A"]},
            "",
            {"question": "   ", "golden_answers": ["A"]},
            {"question": "no answers?", "golden_answers": []},
            "{not json",
            {"golden_answers": ["A"]},
            {"question": "empty alias?", "golden_answers": ["", " "]},
            {"question": 5, "golden_answers": ["A"]},
            [1, 2],
        ],
    )
    with pytest.raises(prep.DataError) as err:
        _load([f])
    msg = str(err.value)
    assert f"{f}, line 3: no question: field 'question' is empty" in msg and "--skip-bad" in msg
    report = prep.LoadReport()
    exs = _load([f], skip_bad=True, report=report)
    assert [e.question for e in exs] == ["ok?"]
    assert len(report.bad_rows) == 7
    details = "\n".join(report.bad_rows)
    assert "line 4: no answers: field 'golden_answers' is empty" in details
    assert "line 5: invalid JSON" in details
    assert "line 6: no question: none of the fields" in details
    assert "line 7: field 'golden_answers': ground_truth has no non-empty answer alias" in details
    assert "line 8: field 'question' must be a string" in details
    assert "line 9: expected an object" in details
    assert report.files == {str(f): 1}


def test_bad_rows_csv_and_parquet_positions(tmp_path):
    c = tmp_path / "nq.csv"
    c.write_text("question,answer\nQ1?,A1\n,A2\nQ3?,\n", encoding="utf-8")
    with pytest.raises(prep.DataError, match=r"nq\.csv, line 3: no question"):
        _load([c])
    report = prep.LoadReport()
    assert len(_load([c], skip_bad=True, report=report)) == 1
    assert [m.split(": ")[0] for m in report.bad_rows] == [f"{c}, line 3", f"{c}, line 4"]

    p = tmp_path / "hotpotqa.parquet"
    pd.DataFrame({"question": ["Q0?", "Q1?"], "golden_answers": [["A"], []]}).to_parquet(p)
    with pytest.raises(prep.DataError, match=r"hotpotqa\.parquet, row 1: no answers"):
        _load([p])


def test_unreadable_inputs(tmp_path):
    with pytest.raises(prep.DataError, match="no such file"):
        _load([tmp_path / "missing.jsonl"])
    x = tmp_path / "nq.xlsx"
    x.write_text("x")
    with pytest.raises(prep.DataError, match="unsupported file type '.xlsx'"):
        _load([x])
    b = tmp_path / "nq.parquet"
    b.write_text("not parquet")
    with pytest.raises(prep.DataError, match="cannot read as parquet"):
        _load([b])
    j = tmp_path / "nq.json"
    j.write_text("[{]")
    with pytest.raises(prep.DataError, match=r"nq\.json: invalid JSON at line 1"):
        _load([j])


# ---------------------------------------------------------------------------------- dedup, sample, overlap


def _ex(q, src="nq"):
    return prep.Example(q, ["a"], src, "f", "line 1")


def test_dedup_within_source():
    exs = [
        _ex("Who wrote Hamlet?"),
        _ex("who wrote  hamlet"),
        _ex("Who wrote Hamlet?", "popqa"),
        _ex("Other"),
    ]
    kept, dropped = prep.dedup_examples(exs)
    assert dropped == 1
    assert [(e.question, e.data_source) for e in kept] == [
        ("Who wrote Hamlet?", "nq"),
        ("Who wrote Hamlet?", "popqa"),
        ("Other", "nq"),
    ]


def test_sample_per_source_seeded():
    exs = [_ex(f"nq{i}") for i in range(10)] + [_ex(f"pq{i}", "popqa") for i in range(4)]
    a = prep.sample_per_source(exs, "3", seed=1)
    assert sum(e.data_source == "nq" for e in a) == 3 and sum(e.data_source == "popqa" for e in a) == 3
    assert [e.question for e in a] == [e.question for e in prep.sample_per_source(exs, "3", seed=1)]
    qs = [e.question for e in a]
    assert qs == sorted(qs, key=lambda q: [e.question for e in exs].index(q))  # file order kept
    b = prep.sample_per_source(exs, "nq=2", seed=1)  # only nq limited
    assert sum(e.data_source == "nq" for e in b) == 2 and sum(e.data_source == "popqa" for e in b) == 4
    c = prep.sample_per_source(exs, "1,popqa=10", seed=1)
    assert sum(e.data_source == "nq" for e in c) == 1 and sum(e.data_source == "popqa" for e in c) == 4
    assert prep.sample_per_source(exs, None, seed=0) == exs
    seeds = {tuple(e.question for e in prep.sample_per_source(exs, "nq=3", seed=s)) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(prep.DataError, match="--sample"):
        prep.parse_sample_spec("nq=x")


def test_overlap_report():
    train = [_ex("Who wrote Hamlet?"), _ex("B")]
    test = [_ex("who wrote hamlet"), _ex("C"), _ex("b", "popqa")]
    rep = prep.overlap_report(train, test)
    assert rep == {
        "test_rows": 3,
        "test_rows_in_train": 2,
        "per_source": {"nq": {"test": 2, "in_train": 1}, "popqa": {"test": 1, "in_train": 1}},
    }


# ------------------------------------------------------------------------------------------- verl rows, CLI


def test_to_verl_rows_columns():
    ex = prep.Example("Who wrote Hamlet?", ["Shakespeare", "W. S."], "nq", "f", "line 1", "id7")
    (row,) = prep.to_verl_rows([ex], "test", tools=["search"], today=TODAY)
    assert row["prompt"] == build_prompt("Who wrote Hamlet?", tools=["search"], today=TODAY)
    assert row["data_source"] == "nq" and row["agent_name"] == "igpo_search"
    assert row["reward_model"] == {"style": "rule", "ground_truth": ["Shakespeare", "W. S."]}
    assert row["extra_info"] == {
        "index": 0,
        "split": "test",
        "id": "id7",
        "question": "Who wrote Hamlet?",
        "tools_kwargs": {
            "search": {
                "create_kwargs": {
                    "question": "Who wrote Hamlet?",
                    "ground_truth": ["Shakespeare", "W. S."],
                    "data_source": "nq",
                }
            }
        },
    }


def test_cli_train_test_out_dir(tmp_path, capsys):
    fr = tmp_path / "flashrag"
    _jsonl(
        fr / "nq" / "train.jsonl",
        [{"id": f"t{i}", "question": f"nq q{i}?", "golden_answers": ["a"]} for i in range(5)],
    )
    _jsonl(
        fr / "nq" / "test.jsonl",
        [
            {"id": "x", "question": "NQ Q1", "golden_answers": ["a"]},
            {"question": "new?", "golden_answers": ["b"]},
        ],
    )
    _jsonl(
        fr / "bamboogle" / "test.jsonl",
        [{"question": f"bb{i}?", "golden_answers": ["c", "d"]} for i in range(4)],
    )
    out = tmp_path / "out"
    rc = prep.main(
        [
            "--train", str(fr / "nq" / "train.jsonl"),
            "--test", str(fr / "nq" / "test.jsonl"), str(fr / "bamboogle" / "test.jsonl"),
            "--out-dir", str(out), "--test-sample", "bamboogle=2", "--seed", "3",
            "--today", TODAY, "--tools", "web_search", "browse_webpage", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"]["train"]["per_source"] == {"nq": 5}
    assert report["outputs"]["test"]["per_source"] == {"bamboogle": 2, "nq": 2}
    assert report["overlap"]["test_rows_in_train"] == 1  # "NQ Q1" == "nq q1?" after normalization
    assert json.loads((out / "prepare_report.json").read_text()) == report

    test_rows = _read_rows(out / "test.parquet")
    assert [r["extra_info"]["index"] for r in test_rows] == [0, 1, 2, 3]
    assert {r["extra_info"]["split"] for r in test_rows} == {"test"}
    r0 = test_rows[0]
    assert r0["data_source"] == "nq" and r0["extra_info"]["id"] == "x"
    assert list(r0["reward_model"]["ground_truth"]) == ["a"]
    assert [dict(m) for m in r0["prompt"]] == build_prompt(
        "NQ Q1", tools=["web_search", "browse_webpage"], today=TODAY
    )
    assert set(r0["extra_info"]["tools_kwargs"]) == {"web_search", "browse_webpage"}
    assert test_rows[1]["extra_info"]["id"] == "nq-test-1"
    assert len(_read_rows(out / "train.parquet")) == 5

    rc = prep.main(
        ["--train", str(fr / "nq" / "train.jsonl"), "--test", str(fr / "nq" / "test.jsonl"),
         "--out-dir", str(out), "--drop-overlap", "--no-progress", "--today", TODAY]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"]["train"]["overlap_dropped"] == 1
    assert report["overlap"]["test_rows_in_train"] == 0


def test_cli_single_split_dedup_skip_bad_and_errors(tmp_path, capsys):
    f = _jsonl(
        tmp_path / "popqa.jsonl",
        [
            {"question": "Q?", "answer": "A"},
            {"question": "q", "answer": "A"},
            {"question": "R?", "answer": ""},
        ],
    )
    out = tmp_path / "t.parquet"
    assert prep.main([str(f), "--split", "test", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {f}, line 3: no answers: field 'answer' is empty" in err

    args = [str(f), "--split", "test", "--out", str(out), "--no-progress", "--skip-bad", "--dedup"]
    assert prep.main(args + ["--report", str(tmp_path / "rep.json")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["outputs"]["test"]["bad_rows"] == 1 and report["outputs"]["test"]["duplicates_dropped"] == 1
    assert "skipped 1 bad row(s)" in captured.err
    assert json.loads((tmp_path / "rep.json").read_text()) == report
    assert [r["extra_info"]["question"] for r in _read_rows(out)] == ["Q?"]

    assert prep.main(["--no-progress"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert prep.main([str(f), "--no-progress"]) == 2
    assert "need --out" in capsys.readouterr().err


def test_script_runs_as_command(tmp_path):
    f = _jsonl(tmp_path / "nq" / "test.jsonl", [{"id": "1", "question": "Q?", "golden_answers": ["A"]}])
    out = tmp_path / "o.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "prepare_data.py"),
            str(f),
            "--split",
            "test",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"]["test"]["rows"] == 1
    assert _read_rows(out)[0]["data_source"] == "nq"

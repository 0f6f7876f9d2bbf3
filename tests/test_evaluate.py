"""Tests for evaluate/: rollout records, per-source scores against hand-computed values, the judge.

Golden values are worked out by hand in the comments (SQuAD normalization, token-multiset F1).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `evaluate/` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from evaluate import calculate_metrics as cm  # noqa: E402
from evaluate.judge import JudgeError, LLMJudge, chat_completions_url, parse_verdict  # noqa: E402
from igpo.rollout_io import (  # noqa: E402
    RolloutError,
    latest_rollout,
    make_record,
    read_rollouts,
    rollout_dir,
    validate_record,
    write_rollouts,
)

CALL = '<tool_call>{"name": "search", "arguments": {"query": ["q"]}}</tool_call><tool_response>doc</tool_response>'


def _resp(answer: str | None, calls: int = 0) -> str:
    """A well-formed response with ``calls`` tool turns and a final answer (or none)."""
    text = "".join(f"<think>step {i}</think>{CALL}" for i in range(calls))
    if answer is not None:
        text += f"<think>done</think><answer>{answer}</answer>"
    return text


def _records() -> list[dict]:
    return [
        # "the cat sat" vs "cat sat down": tokens [cat, sat] vs [cat, sat, down]; P = 2/2, R = 2/3,
        # F1 = 2 * (1 * 2/3) / (1 + 2/3) = 0.8; EM 0; cover-EM 0 ("cat sat down" not inside "cat sat").
        {"data_source": "nq", "question": "q1", "ground_truth": ["cat sat down"],
         "response": _resp("the cat sat"), "prediction": "the cat sat", "turns": 1, "tool_calls": 0},
        # "Paris" vs aliases "Paris" / "paris france" joined DeepResearcher-style: F1 1, EM 1, cover 1.
        # The stale "prediction" field is ignored: the score comes from the response.
        {"data_source": "nq", "question": "q2", "ground_truth": "Paris<|answer_split|>paris france",
         "response": _resp("Paris", calls=1), "prediction": "stale", "turns": 2, "tool_calls": 1},
        # No <answer> at all (truncated after two tool calls): 0 everywhere.
        {"data_source": "nq", "question": "q3", "ground_truth": ["x"],
         "response": _resp(None, calls=2), "prediction": None, "turns": 3, "tool_calls": 2},
        # "Barack Obama was president" vs {"target": ["Obama"]}: 4 predicted tokens, 1 gold, 1 common;
        # P = 1/4, R = 1, F1 = 2 * (1/4) / (5/4) = 0.4; EM 0; cover-EM 1.
        {"data_source": "hotpotqa", "question": "q4", "ground_truth": {"target": ["Obama"]},
         "response": _resp("Barack Obama was president"), "prediction": None, "turns": 1, "tool_calls": 0},
        # "1984." vs "1984": punctuation dropped -> 1, 1, 1.
        {"data_source": "hotpotqa", "question": "q5", "ground_truth": ["1984"],
         "response": _resp("1984.", calls=1), "turns": 2, "tool_calls": 1},
        # "An apple a day" -> "apple day" after dropping articles; gold "apple day" -> 1, 1, 1.
        {"data_source": "bamboogle", "question": "q6", "ground_truth": ["apple day"],
         "response": _resp("An apple a day"), "turns": 1, "tool_calls": 0},
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- rollout_io


def test_make_record_and_write_read(tmp_path):
    rec = make_record(
        data_source="nq",
        question="Who?",
        ground_truth=np.array(["A", "B"], dtype=object),
        response="<think>t</think><answer> A </answer>",
        turns=np.int64(1),
        tool_calls=0,
        reward=0.5,
    )
    assert rec == {
        "data_source": "nq",
        "question": "Who?",
        "ground_truth": ["A", "B"],
        "response": "<think>t</think><answer> A </answer>",
        "prediction": "A",
        "turns": 1,
        "tool_calls": 0,
        "reward": 0.5,
    }
    assert type(rec["turns"]) is int
    assert (
        make_record(data_source="nq", question="q", ground_truth="a", response="none", turns=1, tool_calls=0)[
            "prediction"
        ]
        is None
    )

    out = rollout_dir("proj", "exp", root=tmp_path)
    assert out == tmp_path / "proj" / "exp" / "rollout"
    p = write_rollouts([rec], out, 7)
    assert p == out / "rollout_step_7.json"
    assert json.loads(p.read_text()) == [rec]
    assert read_rollouts(p) == [rec]
    write_rollouts([rec], out, 12)
    assert latest_rollout(out).name == "rollout_step_12.json"  # numeric, not lexical, order
    assert [q.name for q in out.iterdir() if q.suffix == ".tmp"] == []


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"turns": None}, "'turns' must be an integer >= 0"),
        ({"turns": -1}, "'turns' must be an integer >= 0"),
        ({"tool_calls": True}, "'tool_calls' must be an integer"),
        ({"data_source": ""}, "'data_source' must be a non-empty string"),
        ({"ground_truth": []}, "'ground_truth'"),
        ({"ground_truth": {"answers": ["a"]}}, "'ground_truth'.*'target'"),
        ({"response": None}, "'response' must be a string"),
        ({"prediction": 3}, "'prediction' must be a string or null"),
        ({"question": 1}, "'question' must be a string"),
    ],
)
def test_validate_record_errors(change, reason):
    rec = {**_records()[0], **change}
    with pytest.raises(RolloutError, match=reason):
        validate_record(rec, where="record 4")
    with pytest.raises(RolloutError, match="^record 4: "):
        validate_record(rec, where="record 4")


def test_write_rollouts_errors(tmp_path):
    rec = _records()[0]
    bad = {k: v for k, v in rec.items() if k != "tool_calls"}
    with pytest.raises(RolloutError, match=r"record 1: missing field\(s\) \['tool_calls'\]"):
        write_rollouts([rec, bad], tmp_path, 0)
    with pytest.raises(RolloutError, match="step must be an integer"):
        write_rollouts([rec], tmp_path, -1)
    with pytest.raises(RolloutError, match="project"):
        rollout_dir("a/b", "e")
    with pytest.raises(RolloutError, match="JSON cannot store"):
        write_rollouts([{**rec, "extra": object()}], tmp_path, 0)
    assert not (tmp_path / "rollout_step_0.json").exists()


def test_read_rollouts_lenient_and_errors(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(
        json.dumps({"data_source": "nq", "ground_truth": ["a"], "response": "<answer>a</answer>"})
        + "\n\n"
        + json.dumps({"data_source": "nq", "ground_truth": "a", "prediction": "b"})
        + "\n"
    )
    recs = read_rollouts(p)
    assert [(r["prediction"], r["turns"], r["tool_calls"]) for r in recs] == [
        ("a", None, None),
        ("b", None, None),
    ]
    q = tmp_path / "bad.json"
    q.write_text(
        json.dumps([{"data_source": "nq", "ground_truth": ["a"], "response": "x"}, {"data_source": "nq"}])
    )
    with pytest.raises(
        RolloutError, match=r"bad\.json, record 1: missing field\(s\) \['ground_truth', 'response'\]"
    ):
        read_rollouts(q)
    q.write_text('{"a": 1}')
    with pytest.raises(RolloutError, match="expected a JSON list"):
        read_rollouts(q)
    q.write_text("[{")
    with pytest.raises(RolloutError, match="invalid JSON at line 1"):
        read_rollouts(q)
    with pytest.raises(RolloutError, match="no such file"):
        read_rollouts(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- metrics


def test_scores_match_hand_computed_values():
    recs = [validate_record(r, strict=False) for r in _records()]
    s = cm.compute_scores(recs)
    assert list(s) == ["nq", "hotpotqa", "bamboogle", "overall", "average"]  # the paper's order
    # nq: F1 (0.8 + 1 + 0) / 3 = 60; EM 1/3; cover 1/3; turns (1+2+3)/3 = 2; tool calls (0+1+2)/3 = 1.
    assert s["nq"]["f1"] == pytest.approx(60.0)
    assert s["nq"]["em"] == pytest.approx(100 / 3, abs=1e-3)
    assert s["nq"]["cover_em"] == pytest.approx(100 / 3, abs=1e-3)
    assert (s["nq"]["n"], s["nq"]["turns"], s["nq"]["tool_calls"]) == (3, 2.0, 1.0)
    # The truncated response has no answer, so it fails the format check: 2 of 3 pass.
    assert s["nq"]["format_ok"] == pytest.approx(200 / 3, abs=1e-3)
    # hotpotqa: F1 (0.4 + 1) / 2 = 70; EM 50; cover (1 + 1) / 2 = 100.
    assert (s["hotpotqa"]["f1"], s["hotpotqa"]["em"], s["hotpotqa"]["cover_em"]) == pytest.approx(
        (70, 50, 100)
    )
    assert (s["bamboogle"]["f1"], s["bamboogle"]["em"], s["bamboogle"]["cover_em"]) == pytest.approx(
        (100, 100, 100)
    )
    # overall (micro over 6): F1 4.2/6 = 70; EM 3/6 = 50; cover 4/6.
    o = s["overall"]
    assert (o["f1"], o["em"], o["n"]) == pytest.approx((70.0, 50.0, 6))
    assert o["cover_em"] == pytest.approx(400 / 6, abs=1e-3)
    assert o["turns"] == pytest.approx(10 / 6, abs=1e-3)
    # average (macro over 3 sources): F1 (60 + 70 + 100)/3; EM (33.33 + 50 + 100)/3; cover (33.33 + 100 + 100)/3.
    a = s["average"]
    assert a["f1"] == pytest.approx(230 / 3, abs=1e-3)
    assert a["em"] == pytest.approx((100 / 3 + 150) / 3, abs=1e-3)
    assert a["cover_em"] == pytest.approx((100 / 3 + 200) / 3, abs=1e-3)
    assert (a["n"], a["n_sources"]) == (6, 3)
    assert "judge_acc" not in o


def test_malformed_answers_score_zero():
    cases = [
        "<think>t</think><answer>Paris",  # never closed
        "<think>t</think>Paris",  # no tag
        "",
    ]
    recs = [
        validate_record({"data_source": "nq", "ground_truth": ["Paris"], "response": r}, strict=False)
        for r in cases
    ]
    s = cm.compute_scores(recs)
    assert (s["nq"]["f1"], s["nq"]["em"], s["nq"]["cover_em"]) == (0.0, 0.0, 0.0)


def test_strict_format_zeroes_bad_turn_grammar():
    # The answer is right, but there is no <think> before it: scored by default, 0 with strict_format.
    rec = validate_record(
        {"data_source": "nq", "ground_truth": ["Paris"], "response": "<answer>Paris</answer>"}, strict=False
    )
    assert cm.compute_scores([rec])["nq"]["f1"] == 100.0
    assert cm.compute_scores([rec])["nq"]["format_ok"] == 0.0
    assert cm.compute_scores([rec], strict_format=True)["nq"]["f1"] == 0.0


def test_table_shows_paper_row():
    recs = [validate_record(r, strict=False) for r in _records()]
    table = cm.format_table(cm.compute_scores(recs))
    lines = table.splitlines()
    assert lines[0].startswith("| data_source | n | F1 | EM | cover-EM |") and "paper IGPO F1" in lines[0]
    assert lines[2] == "| nq | 3 | 60.0 | 33.3 | 33.3 | 66.7 | 2.00 | 1.00 | 46.4 |"
    assert lines[3].endswith("| 59.0 |") and lines[4].endswith("| 77.0 |")
    assert lines[6].startswith("| **average** | 6 | 76.7 |") and lines[6].endswith(
        "| - |"
    )  # not all 7 present
    # With all seven present the paper's average 60.2 is shown beside ours.
    seven = [
        validate_record(
            {"data_source": n, "ground_truth": ["a"], "response": "<answer>a</answer>"}, strict=False
        )
        for n in ["nq", "tq", "hotpotqa", "2wiki", "musique", "bamboogle", "popqa", "mine"]
    ]
    t = cm.format_table(cm.compute_scores(seven))
    assert "| 80.6 |" in t and "| 72.1 |" in t
    assert re.search(r"\| \*\*average\*\* .*\| 60\.2 \|", t)
    assert t.splitlines()[9].startswith("| mine |")  # unknown sources after the paper's seven


def test_cli_on_rollout_file_and_folder(tmp_path, capsys):
    out = rollout_dir("p", "e", root=tmp_path)
    write_rollouts(
        [validate_record(r, strict=False) | {"question": r["question"]} for r in _records()], out, 5
    )
    assert cm.main([str(out)]) == 0  # the folder: its latest step
    printed = capsys.readouterr()
    assert "| nq | 3 | 60.0 |" in printed.out
    score = json.loads((out.parent / "score_step_5.json").read_text())  # as evaluate.sh names it
    assert score["overall"]["f1"] == pytest.approx(70.0)
    assert set(score["nq"]) == {"f1", "em", "cover_em", "n", "turns", "tool_calls", "format_ok"}
    assert cm.main([str(out / "rollout_step_5.json"), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == score
    capsys.readouterr()
    assert cm.main([str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_experiment_name_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cm, "EVALUATE_DIR", tmp_path)
    (tmp_path / "exp1_result.json").write_text(json.dumps(_records()))
    assert cm.main(["exp1"]) == 0
    score = json.loads((tmp_path / "exp1_score.json").read_text())
    assert score["bamboogle"]["f1"] == 100.0
    assert cm.main(["exp2"]) == 2
    assert "exp2_result.json" in capsys.readouterr().err


def test_cli_finds_a_run_by_experiment_name_and_names_scores_as_evaluate_sh(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cm, "EVALUATE_DIR", tmp_path / "evaluate")
    rollouts = [validate_record(r, strict=False) for r in _records()]
    write_rollouts(rollouts, rollout_dir("igpo-local", "grpo", root=tmp_path / "outputs"), 10)
    write_rollouts(rollouts, rollout_dir("igpo-local", "grpo", root=tmp_path / "outputs"), 30)
    assert cm.main(["grpo"]) == 0
    assert (tmp_path / "outputs" / "igpo-local" / "grpo" / "score_step_30.json").is_file()
    assert "score_step_30.json" in capsys.readouterr().err
    write_rollouts(rollouts, rollout_dir("igpo", "grpo", root=tmp_path / "outputs"), 5)
    assert cm.main(["grpo"]) == 2  # two runs of that name: asks for the folder
    assert "several runs are named 'grpo'" in capsys.readouterr().err
    assert cm.main(["nothing"]) == 2
    assert "no run outputs/*/nothing/rollout" in capsys.readouterr().err


def test_evaluate_sh_and_calculate_metrics_share_the_score_name():
    from igpo.rollout_io import score_path

    text = (ROOT / "evaluate.sh").read_text()
    assert "score_path" in text and "--out" not in text.split("score_rollout() {")[1].split("}")[0]
    assert score_path("o/p/e/rollout/rollout_step_7.json") == Path("o/p/e/score_step_7.json")
    assert score_path("evaluate/exp_result.json") == Path("evaluate/exp_score.json")
    assert score_path("r.json") == Path("r_score.json")


def test_script_runs_as_command(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_records()))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate" / "calculate_metrics.py"), str(p)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| bamboogle | 1 | 100.0 | 100.0 | 100.0 |" in proc.stdout
    assert (tmp_path / "r_score.json").is_file()


# ------------------------------------------------------------------------------------------------ judge


class FakeJudgeServer:
    """A real OpenAI-style HTTP server on 127.0.0.1: replies 'correct' iff the prediction is a gold alias.

    ``script`` is a list of actions consumed one per request before the normal behaviour:
    an int (HTTP status to return), "slow" (sleep past the client timeout) or "garbage" (unparsable reply).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                action = outer.script.pop(0) if outer.script else None
                if action == "slow":
                    time.sleep(0.6)
                if isinstance(action, int):
                    self._send(action, {"error": {"message": "scripted failure"}})
                    return
                prompt = body["messages"][-1]["content"]
                golds = re.search(r"Gold answer\(s\): (.*)", prompt).group(1).split(" | ")
                pred = re.search(r"Predicted answer: (.*)", prompt).group(1)
                word = (
                    "maybe"
                    if action == "garbage"
                    else ("Correct" if pred.lower() in [g.lower() for g in golds] else "incorrect")
                )
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": word}}]})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FakeJudgeServer() as s:
        yield s


def test_chat_completions_url_and_verdicts():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert (
        chat_completions_url("https://x/compatible-mode/v1")
        == "https://x/compatible-mode/v1/chat/completions"
    )
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        chat_completions_url("h:8000")
    assert parse_verdict("Correct.") is True
    assert parse_verdict("incorrect") is False
    assert parse_verdict("The answer is incorrect; the correct one is X") is False
    assert parse_verdict("maybe") is None


def test_judge_correct_cache_and_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-secret-123")
    cache = tmp_path / "cache.sqlite"
    items = [
        ("Who?", ["John F. Kennedy", "JFK"], "jfk"),
        ("Where?", ["Paris"], "Rome"),
        ("None?", ["a"], None),
    ]
    with LLMJudge(server.url, "judge-m", cache_path=cache, backoff=0) as judge:
        verdicts = judge.judge_many(items, workers=2)
    assert [v.correct for v in verdicts] == [True, False, False]
    assert len(server.requests) == 2  # no request for a missing prediction
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-secret-123"
    assert req["body"]["model"] == "judge-m" and req["body"]["temperature"] == 0
    # A second judge with the same cache sends nothing; another model is a different key.
    with LLMJudge(server.url, "judge-m", cache_path=cache) as judge:
        again = judge.judge_many(items, workers=1)
    assert [v.correct for v in again] == [True, False, False] and all(v.cached for v in again[:2])
    assert len(server.requests) == 2
    with LLMJudge(server.url, "other-m", cache_path=cache) as judge:
        judge.judge(*items[0])
    assert len(server.requests) == 3


def test_judge_retries_then_succeeds(server, caplog):
    server.script = [503, 429, "slow"]
    with (
        caplog.at_level(logging.WARNING),
        LLMJudge(server.url, "m", api_key="sk-hidden", max_retries=3, backoff=0, timeout=0.2) as judge,
    ):
        v = judge.judge("Q", ["a"], "a")
    assert v.correct and v.parsed
    assert judge.requests == 4 and len(server.requests) == 4
    assert "retry 1/3" in caplog.text and "sk-hidden" not in caplog.text


def test_judge_bounded_retries_and_non_retryable(server, caplog):
    server.script = [500] * 10
    with (
        caplog.at_level(logging.WARNING),
        LLMJudge(server.url, "m", api_key="sk-hidden", max_retries=2, backoff=0) as judge,
    ):
        with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\); last error: HTTP 500") as err:
            judge.judge("Q", ["a"], "a")
    assert len(server.requests) == 3
    assert "sk-hidden" not in str(err.value) and "sk-hidden" not in caplog.text
    server.script = [401]
    n = len(server.requests)
    with LLMJudge(server.url, "m", api_key="sk-hidden", max_retries=5, backoff=0) as judge:
        with pytest.raises(JudgeError, match="HTTP 401 \\(not retried\\)"):
            judge.judge("Q", ["a"], "a")
    assert len(server.requests) == n + 1


def test_judge_unreachable_endpoint_is_bounded():
    with FakeJudgeServer() as s:
        url = s.url
    with LLMJudge(url, "m", max_retries=1, backoff=0, timeout=1.0) as judge:  # the server is gone
        with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\); last error: ConnectError"):
            judge.judge("Q", ["a"], "a")


def test_cli_with_judge(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(_records()))
    server.script = ["garbage"]  # the first reply cannot be read: counted incorrect and reported
    args = [str(p), "--judge", "--judge-url", server.url, "--judge-model", "m", "--judge-workers", "1"]
    assert cm.main(args) == 0
    score = json.loads((tmp_path / "r_score.json").read_text())
    # Exact string match in the fake judge: q1 "the cat sat" (garbage reply -> incorrect), q2 "Paris" ok,
    # q3 no answer; q4 no; q5 "1984." no; q6 "An apple a day" no -> nq 1/3, hotpotqa 0, bamboogle 0.
    assert score["nq"]["judge_acc"] == pytest.approx(100 / 3, abs=1e-3)
    assert score["nq"]["judge_unparsed"] == 1 and score["overall"]["judge_unparsed"] == 1
    assert score["hotpotqa"]["judge_acc"] == 0.0
    assert score["average"]["judge_acc"] == pytest.approx(100 / 9, abs=1e-3)
    assert "| judge |" in capsys.readouterr().out
    assert server.requests[0]["auth"] is None
    assert (tmp_path / "judge_cache.sqlite").is_file()
    n = len(server.requests)
    assert cm.main(args) == 0  # all cached
    assert len(server.requests) == n
    assert cm.main([str(p), "--judge"]) == 2
    assert "--judge-url" in capsys.readouterr().err


# ------------------------------------------------------------------ the official release's rollout file
def _chat(system: str, user: str, *assistant_and_tools: str) -> str:
    """A whole conversation in Qwen's chat template, as the release's ``message_str``."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
    for k, part in enumerate(assistant_and_tools):
        role = "assistant" if k % 2 == 0 else "user"
        text += f"<|im_start|>{role}\n{part}<|im_end|>\n"
    return text


def _release_files(tmp_path: Path) -> tuple[Path, Path]:
    import pandas as pd

    def row(source: str, golds, question: str, in_extra: bool = True) -> dict:
        return {
            "data_source": source,
            "prompt": [
                {"role": "system", "content": "You are a search agent."},
                {"role": "user", "content": f"Answer the question. Question: {question}"},
            ],
            "reward_model": {"style": "rule", "ground_truth": golds},
            "extra_info": {"index": 0, "question": question if in_extra else ""},
        }

    parquet = tmp_path / "test.parquet"
    pd.DataFrame(
        [
            row("nq", {"target": ["Paris"]}, "What is the capital of France?"),
            row("hotpotqa", {"target": ["Barack Obama", "Obama"]}, "Who was the 44th US president?"),
            row(
                "nq", {"target": ["blue whale"]}, "Largest animal?", in_extra=False
            ),  # question in the prompt
            row("nq", {"target": ["Mount Everest"]}, "Highest mountain?"),
        ]
    ).to_parquet(parquet)
    # the system prompt shows an answer example, which must not be taken as the model's answer
    system = "Think, search, then answer like <answer> Mount Everest </answer>."
    call = '<tool_call>{"name": "search", "arguments": {"query": ["q"]}}</tool_call>'
    release = [  # not in parquet order: idx is the row
        {
            "idx": 2,
            "question": "Largest animal?",
            "message_str": _chat(
                system,
                "Largest animal?",
                call,
                "<tool_response>whales</tool_response>",
                "<answer>the blue whale</answer>",
            ),
        },
        {
            "idx": 0,
            "question": "What is the capital of France?",
            "message_str": _chat(
                system,
                "What is the capital of France?",
                "<answer>Lyon</answer> no, <answer>Paris, France</answer>",
            ),
        },
        {
            "idx": 1,
            "question": "Who was the 44th US president?",
            "message_str": _chat(
                system,
                "Who was the 44th US president?",
                call,
                "<tool_response>...</tool_response>",
                "<answer>Barack Hussein Obama</answer>",
            ),
        },
        {
            "idx": 3,
            "question": "Highest mountain?",
            "message_str": _chat(system, "Highest mountain?", "I give up."),
        },
    ]
    rollout = tmp_path / "rollout_step_0.json"
    rollout.write_text(json.dumps(release))
    return rollout, parquet


def test_release_rollout_scored_with_its_parquet(tmp_path, capsys):
    rollout, parquet = _release_files(tmp_path)
    assert cm.main([str(rollout), "--release-parquet", str(parquet)]) == 0
    table = capsys.readouterr().out
    scores = json.loads((tmp_path / "rollout_step_0_score.json").read_text())
    # nq: idx 0 "Paris, France" vs "Paris": P 1/2, R 1 -> F1 2/3, EM 0, cover-EM 1 (the last answer, not "Lyon");
    #     idx 2 "the blue whale" -> "blue whale": F1 1, EM 1; idx 3 no answer of its own -> 0 (not the
    #     system prompt's "Mount Everest"). F1 (2/3 + 1 + 0) / 3 = 55.5556, EM 1/3, cover-EM 2/3.
    assert scores["nq"] | {"turns": None} == {
        "f1": 55.5556,
        "em": 33.3333,
        "cover_em": 66.6667,
        "n": 3,
        "turns": None,
        "tool_calls": 0.3333,
        "format_ok": None,
    }
    # hotpotqa: "barack hussein obama" vs "barack obama": P 2/3, R 1 -> 0.8 (vs "obama" 0.5): F1 80;
    # EM 0; cover-EM 1 (the alias "obama" occurs in the prediction)
    assert (scores["hotpotqa"]["f1"], scores["hotpotqa"]["em"], scores["hotpotqa"]["cover_em"]) == (
        80.0,
        0.0,
        100.0,
    )
    assert scores["hotpotqa"]["tool_calls"] == 1.0
    assert scores["overall"]["f1"] == 61.6667  # (2/3 + 1 + 0 + 0.8) / 4
    assert scores["average"]["f1"] == 67.7778  # (55.5556 + 80) / 2
    assert "| nq | 3 | 55.6 | 33.3 | 66.7 |" in table and "| hotpotqa | 1 | 80.0 | 0.0 | 100.0 |" in table


def test_release_rollout_needs_its_parquet(tmp_path, capsys):
    rollout, parquet = _release_files(tmp_path)
    assert cm.main([str(rollout)]) == 2
    err = capsys.readouterr().err
    assert "official release's rollout format" in err and "--release-parquet PATH" in err
    data = json.loads(rollout.read_text())
    data[1]["question"] = "What is the capital of Spain?"  # rollout and parquet do not belong together
    rollout.write_text(json.dumps(data))
    assert cm.main([str(rollout), "--release-parquet", str(parquet)]) == 2
    err = capsys.readouterr().err
    assert "1 question(s)" in err and "idx 0: rollout 'What is the capital of Spain?'" in err
    data[1]["idx"] = 4
    rollout.write_text(json.dumps(data))
    assert cm.main([str(rollout), "--release-parquet", str(parquet)]) == 2
    assert "field 'idx' must be a row number 0..3" in capsys.readouterr().err

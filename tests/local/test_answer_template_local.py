"""The local engine checks its answer template against its own tokenizer at start-up, before the warm-up."""

import pytest

from igpo.info_gain import AnswerTemplateError
from igpo.local.engine import LocalEngine, load_config
from igpo.local.synthetic import ANSWER_TEMPLATE

SMALL = ["n_people=8", "n_companies=4", "n_cities=4", "n_countries=2", "tensorboard=false", "progress=false"]


def _engine(tmp_path, *overrides):
    eng = LocalEngine(load_config(None, [*SMALL, f"out_root={tmp_path}", *overrides]), log=lambda *a: None)
    eng.prepare_task()
    return eng


def test_the_task_layout_passes_and_scores_the_answer_words(tmp_path):
    eng = _engine(tmp_path)
    assert eng.cfg.answer_template == ANSWER_TEMPLATE
    eng.new_policy()
    eng.check_answer_template()  # the word-level tokenizer's " name" tokens carry only a leading space
    enc = eng.tokenizer(" " + eng.train_q[0].answer, add_special_tokens=False)
    assert eng.tokenizer.unk_token_id not in enc["input_ids"]


def test_a_straddling_template_stops_the_run_before_the_warm_up(tmp_path):
    bad = "<think> the answer is </think> <answer> id_{answer} </answer>"  # " id_Name" is one word piece
    eng = _engine(tmp_path, f"answer_template='{bad}'")
    with pytest.raises(AnswerTemplateError) as err:
        eng.build_policy()
    msg = str(err.value)
    assert msg.startswith(f"answer_template={bad!r}: for the gold answer ")
    assert "id_" in msg and "line break" in msg
    assert not (eng.out / "policy_warm").exists()  # refused before any training


def test_train_main_reports_the_refusal_in_one_message(tmp_path, capsys):
    from igpo.local.train import main

    bad = "<think> the answer is </think> <answer> id_{answer} </answer>"
    rc = main(
        ["--config", str(tmp_path / "none.yaml"), *SMALL, f"out_root={tmp_path}", f"answer_template='{bad}'"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(
        f"igpo.local.train: answer_template={bad!r}: for the gold answer"
    )
    assert not (tmp_path / "igpo-local" / "embedded-default" / "policy_warm").exists()  # no warm-up ran

"""The verl trainer checks algorithm.igpo.answer_template against the actor's tokenizer on the training
data's gold answers, right after verl builds its dataloaders (before any worker or rollout; no Ray here)."""

import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from igpo.info_gain import AnswerTemplateError
from igpo.local.tiny_policy import CHAT_TEMPLATE
from igpo.prompts import ANSWER_WRAPPER, INLINE_ANSWER_WRAPPER, build_prompt
from igpo.verl.config import IGPO_DEFAULTS
from igpo.verl.ig_recompute import dataset_answers
from igpo.verl.main import CONFIG_DIR
from igpo.verl.trainer import IGPOTrainer

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.qwen2_bpe import qwen2_bpe_tokenizer  # noqa: E402

GOLDS = [["1984"], ["Paris", "City of Light"], ["Canberra"], ["Washington, D.C."]]


def compose_trainer(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="igpo_trainer", overrides=list(overrides))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A train parquet with the columns scripts/prepare_data.py writes."""
    rows = [
        {
            "data_source": "nq",
            "prompt": build_prompt(f"question {i}?", today="2025-01-01"),
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": gt},
            "extra_info": {"index": i, "split": "train"},
            "agent_name": "igpo_search",
        }
        for i, gt in enumerate(GOLDS * 4)
    ]
    path = tmp_path_factory.mktemp("data") / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _tokenizer():
    tok = qwen2_bpe_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _trainer(data, template=None, ig_source="recompute"):
    cfg = compose_trainer(
        [
            f"data.train_files={data}",
            f"data.val_files={data}",
            "data.train_batch_size=4",
            "data.val_batch_size=4",
        ]
    )
    cfg.algorithm.igpo.ig_source = ig_source
    if template is not None:
        cfg.algorithm.igpo.answer_template = template
    trainer = IGPOTrainer.__new__(IGPOTrainer)  # only the attributes _init_dataloader reads
    trainer.config = cfg
    trainer.trainer_mode, trainer.parameter_sync_step = "sync", 1
    trainer.tokenizer, trainer.processor = _tokenizer(), None
    return trainer


def test_the_default_is_the_system_prompts_layout_in_the_config_too():
    assert IGPO_DEFAULTS["answer_template"] == ANSWER_WRAPPER
    assert compose_trainer().algorithm.igpo.answer_template == ANSWER_WRAPPER


def test_dataset_answers_are_the_scored_first_aliases(data):
    trainer = _trainer(data)
    trainer._init_dataloader()
    answers = dataset_answers(trainer.train_dataset)
    assert answers == ["1984", "Paris", "Canberra", "Washington, D.C."] * 4
    assert len(dataset_answers(trainer.train_dataset, k=5)) == 5
    rows = [
        {"reward_model": {"ground_truth": {"target": ["b", "c"]}}},
        {"reward_model": {"ground_truth": "a"}},
    ]
    assert dataset_answers(rows) == ["b", "a"]  # Search-R1's {"target": [...]} and a plain string
    with pytest.raises(ValueError, match="train row 1: no reward_model.ground_truth"):
        dataset_answers([rows[0], {"reward_model": {"style": "rule"}}])


def test_the_inline_template_stops_the_trainer_before_any_worker(data):
    trainer = _trainer(data, INLINE_ANSWER_WRAPPER)
    with pytest.raises(AnswerTemplateError) as err:
        trainer._init_dataloader()
    msg = str(err.value)
    assert msg.startswith(
        f"algorithm.igpo.answer_template={INLINE_ANSWER_WRAPPER!r}: for the gold answer 'Paris'"
    )
    assert "'>Pa'" in msg


def test_the_default_passes_and_ig_source_none_skips_the_check(data):
    trainer = _trainer(data)
    trainer._init_dataloader()
    assert len(trainer.train_dataset) == 16
    _trainer(data, INLINE_ANSWER_WRAPPER, ig_source="none")._init_dataloader()  # no copies, nothing to check

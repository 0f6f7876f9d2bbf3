"""Synthetic multi-hop task and the word-level tiny policy: determinism, answerability, round trips."""

import random

import pandas as pd
import pytest

from igpo.answer import check_format, extract_answer
from igpo.local.synthetic import SYSTEM_PROMPT, load_task, make_task, search_query, teacher_turns, write_task
from igpo.local.tiny_policy import TAGS, build_policy, build_tokenizer, load_policy, save_policy, word_pieces
from igpo.prompts import parse_tool_call


@pytest.fixture(scope="module")
def task():
    return make_task(seed=3, n_people=20, n_companies=6, n_cities=5, n_countries=3)


def test_same_seed_same_task_other_seed_other_task(task):
    again = make_task(seed=3, n_people=20, n_companies=6, n_cities=5, n_countries=3)
    assert again.passages == task.passages and again.questions == task.questions
    assert make_task(seed=4, n_people=20, n_companies=6, n_cities=5, n_countries=3).passages != task.passages


def _facts_from_corpus(task) -> dict[tuple[str, str], str]:
    """(subject, cue) -> object, parsed from the passage texts alone (independent of task.facts)."""
    import re

    out = {}
    for p in task.passages:
        title, text = p["contents"].split("\n", 1)
        m = re.fullmatch(r"(.+) (was born in|works for|is a company based in|is a city in) (\w+)\.", text)
        assert m and m.group(1) == title.strip('"'), text  # one fact per passage, its object last
        out[(m.group(1), m.group(2))] = m.group(3)
    return out


CUE = {
    "born_in": "was born in",
    "works_for": "works for",
    "based_in": "is a company based in",
    "country_of": "is a city in",
}


def test_every_answer_is_read_along_the_path_from_the_corpus(task):
    facts = _facts_from_corpus(task)
    for q in task.questions:
        assert len(q.path) == q.hops == len(q.relations)
        assert q.question.endswith(" " + q.path[0])  # the person is the last thing the question says
        for k, rel in enumerate(q.relations):
            nxt = q.path[k + 1] if k + 1 < q.hops else q.answer
            assert facts[(q.path[k], CUE[rel])] == nxt
    assert {q.hops for q in task.questions} == {1, 2, 3}
    assert len(task.questions) == 20 * 5


def test_split_is_by_person_and_files_round_trip(task, tmp_path):
    train, test = task.split(0.25)
    assert not {q.path[0] for q in train} & {q.path[0] for q in test}
    assert len(train) + len(test) == len(task.questions) and len(test) == 5 * 5
    paths = write_task(task, tmp_path, test_fraction=0.25)
    df = pd.read_parquet(paths["train"])
    assert len(df) == len(train)
    row = df.iloc[0]
    assert row["prompt"][0]["content"] == SYSTEM_PROMPT and row["prompt"][1]["content"] == train[0].question
    assert list(row["reward_model"]["ground_truth"]) == [train[0].answer]
    assert row["agent_name"] == "igpo_search"
    back = load_task(tmp_path)
    assert back.questions == task.questions and back.passages == task.passages


def test_teacher_turns_follow_the_grammar_and_the_probabilities(task):
    q = next(q for q in task.questions if q.hops == 3)
    perfect = teacher_turns(q, task, random.Random(0), p_follow=1.0, p_answer=1.0)
    assert len(perfect) == 4
    queries = [parse_tool_call(t)[1]["query"][0] for t in perfect[:-1]]
    assert queries == [" " + search_query(e, r) for e, r in zip(q.path, q.relations, strict=True)]
    assert queries[0] == f" {q.path[0]} works"  # a person has one passage per fact: the query names it
    assert extract_answer(perfect[-1]) == q.answer
    text = "".join(t + "<tool_response>x</tool_response>" for t in perfect[:-1]) + perfect[-1]
    assert check_format(text) == (True, "ok")
    rng = random.Random(1)
    answers = [
        extract_answer(teacher_turns(q, task, rng, p_follow=1.0, p_answer=0.3)[-1]) for _ in range(400)
    ]
    share = sum(a == q.answer for a in answers) / len(answers)
    assert 0.2 < share < 0.4  # binomial(400, 0.3): 5 sd either side
    assert all(a in task.entities[q.kind] for a in answers)


def test_teacher_reads_its_answer_off_the_last_passage_it_searched(task):
    """With p_follow = 0 every later hop is a same-kind distractor of what the previous passage names,
    and the answer is what the last passage says (read from the corpus text, not from task.facts)."""
    facts = _facts_from_corpus(task)
    kinds = {e: k for k, names in task.entities.items() for e in names}
    rng = random.Random(2)
    for q in [q for q in task.questions if q.hops > 1][:40]:
        turns = teacher_turns(q, task, rng, p_follow=0.0, p_answer=1.0)
        entities = [parse_tool_call(t)[1]["query"][0].strip() for t in turns[:-1]]
        entities[0] = q.path[0]  # the person's query carries the fact's word
        for k in range(1, q.hops):
            right = facts[(entities[k - 1], CUE[q.relations[k - 1]])]
            assert entities[k] != right and kinds[entities[k]] == kinds[right]
        answer = extract_answer(turns[-1])
        assert answer == facts[(entities[-1], CUE[q.relations[-1]])] and kinds[answer] == q.kind


def test_teacher_stopping_early_answers_with_the_wrong_kind(task):
    """With p_search = 0 the teacher searches once and answers with what that passage says (read from
    the corpus text): for a multi-hop question that is an entity of another kind than the gold answer."""
    facts = _facts_from_corpus(task)
    kinds = {e: k for k, names in task.entities.items() for e in names}
    rng = random.Random(3)
    for q in [q for q in task.questions if q.hops > 1][:40]:
        turns = teacher_turns(q, task, rng, p_search=0.0)
        assert len(turns) == 2
        assert parse_tool_call(turns[0])[1]["query"] == [" " + search_query(q.path[0], q.relations[0])]
        answer = extract_answer(turns[-1])
        assert answer == facts[(q.path[0], CUE[q.relations[0]])]
        assert kinds[answer] != q.kind


def test_teacher_search_depth_follows_p_search(task):
    """Each further hop is taken with probability p_search: 2-hop plans search twice with p, 3-hop plans
    three times with p^2; 1-hop plans always search once."""
    rng = random.Random(4)
    for hops, expected in ((1, 1.0), (2, 0.6), (3, 0.36)):
        q = next(q for q in task.questions if q.hops == hops)
        full = [len(teacher_turns(q, task, rng, p_search=0.6)) == hops + 1 for _ in range(600)]
        sd = (expected * (1 - expected) / 600) ** 0.5
        assert abs(sum(full) / 600 - expected) <= 5 * sd + 1e-9


def test_teacher_recall_answers_a_city_s_country_from_memory(task):
    """With p_search = 0 and p_recall = 1, a country question whose only passage names a city is
    answered with that city's country (as the corpus states it); other stops are copied as before."""
    facts = _facts_from_corpus(task)
    rng = random.Random(5)
    seen = set()
    for q in [q for q in task.questions if q.hops > 1][:60]:
        answer = extract_answer(teacher_turns(q, task, rng, p_search=0.0, p_recall=1.0)[-1])
        read = facts[(q.path[0], CUE[q.relations[0]])]
        if q.kind == "country" and q.relations[0] == "born_in":
            assert answer == facts[(read, CUE["country_of"])] == q.answer
        else:  # a company (3-hop stop) or a city question: copied off the passage
            assert answer == read
        seen.add((q.kind, q.relations[0]))
    assert {("country", "born_in"), ("country", "works_for"), ("city", "works_for")} <= seen


def test_a_task_folder_of_another_version_is_refused(task, tmp_path):
    import json

    write_task(task, tmp_path)
    meta = json.loads((tmp_path / "task.json").read_text())
    meta["version"] = 1
    (tmp_path / "task.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another version"):
        load_task(tmp_path)


def test_word_tokenizer_round_trips_task_text(task, tmp_path):
    texts = [p["contents"] for p in task.passages] + [q.question for q in task.questions] + [SYSTEM_PROMPT]
    turns = teacher_turns(task.questions[0], task, random.Random(0))
    tok = build_tokenizer(texts + turns)
    for text in texts[:5] + turns:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids
    for tag in TAGS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    assert tok.encode(" zzzunseen", add_special_tokens=False) == [tok.unk_token_id]
    assert word_pieces('{"a": 1}') == ["{", '"', "a", '"', ":", " 1", "}"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = build_policy(tok, hidden_size=32, layers=1, heads=2)
    save_policy(model, tok, tmp_path / "policy")
    model2, tok2 = load_policy(tmp_path / "policy")
    assert tok2.decode(tok2.encode(turns[0], add_special_tokens=False)) == turns[0]
    import torch

    ids = torch.tensor([tok.encode(turns[0], add_special_tokens=False)])
    torch.testing.assert_close(model(ids).logits, model2(ids).logits)

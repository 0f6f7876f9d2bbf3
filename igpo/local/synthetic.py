"""A synthetic multi-hop search task, generated deterministically from a seed.

A knowledge base of fictional people, companies, cities and countries is written as passages of one
fact each (the corpus the handler's BM25 backend serves): "P was born in C.", "P works for K.",
"K is a company based in C.", "C is a city in N.". Questions need 1–3 searches and end with the person:

=====  ==========================================================  ========================
hops   question                                                    search path
=====  ==========================================================  ========================
1      where was this person born? P                               P born
1      which company does this person work for? P                  P works
2      in which country was this person born? P                    P born → city
2      in which city is the company of this person based? P        P works → company
3      in which country is the company of this person based? P     P works → company → city
=====  ==========================================================  ========================

Every name is made up, so the policy cannot know an answer without searching; the gold answer is
always written in the last passage of the path. A scripted *teacher* plans the demonstrations of the
warm-up. It searches the question's person first; before each further hop it stops early with
probability ``1 - p_search`` (else it searches the entity the last passage names, or with probability
``1 - p_follow`` a same-kind distractor); it then answers with what the *last passage it read* says
(with probability ``p_answer``; else a same-kind distractor). The warmed policy thus knows the turn
format and how to copy a name off a passage, but not *how far to search*: it stops a multi-hop question
early about half of the time and answers with the wrong kind of entity (a city for a country). RL must
learn the search depth of each question. Information gain rewards the search that reads the last
passage of the path (it raises the probability of the gold answer; earlier passages hardly do), so on
this task it credits the same rollouts as the outcome (docs/benchmarks.md has what that means for the
IGPO-vs-GRPO comparison).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from igpo.prompts import format_tool_call

#: Short on purpose: every prompt token dilutes the attention of a randomly initialised policy. With a
#: 70-token prompt describing the turn format the tiny policy had not learned to copy a name off a
#: passage after 800 warm-up steps; with this one it copies 98% of answers right after 300.
SYSTEM_PROMPT = "answer the question. search first."
DATA_SOURCE = "synthetic_multihop"
#: bumped when the task layout changes, so a stale task folder is refused rather than misread
TASK_VERSION = 4
_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass
class Question:
    """One question with its gold answer and the entities to search, in order."""

    qid: str
    question: str
    answer: str
    hops: int
    path: list[str]
    kind: str  # the entity kind of the answer: city, company or country
    relations: list[str] = field(default_factory=list)  # one per hop: path[k] -> path[k+1] (last: -> answer)


@dataclass
class Task:
    """The knowledge base (as passages) and the questions."""

    seed: int
    passages: list[dict[str, str]]
    questions: list[Question]
    entities: dict[str, list[str]] = field(default_factory=dict)
    #: relation -> {subject: object}: born_in, works_for (person), based_in (company), country_of (city)
    facts: dict[str, dict[str, str]] = field(default_factory=dict)

    def split(self, test_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
        """Deterministic train/test split by person (a test person never appears in training)."""
        people = sorted({q.path[0] for q in self.questions})
        rng = random.Random(self.seed + 1)
        rng.shuffle(people)
        n_test = max(1, round(len(people) * test_fraction))
        test_people = set(people[:n_test])
        train = [q for q in self.questions if q.path[0] not in test_people]
        test = [q for q in self.questions if q.path[0] in test_people]
        return train, test


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        k = rng.randint(*syllables)
        name = "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(
            ["", "n", "r", "l"]
        )
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def make_task(
    seed: int = 0,
    n_people: int = 60,
    n_companies: int = 16,
    n_cities: int = 12,
    n_countries: int = 5,
    hops: tuple[int, ...] = (1, 2, 3),
) -> Task:
    """Generate a task; the same arguments always give the same task."""
    if min(n_people, n_companies, n_cities, n_countries) < 2:
        raise ValueError("every entity kind needs at least 2 entities (distractors are drawn from them)")
    if not set(hops) <= {1, 2, 3}:
        raise ValueError(f"hops must be a subset of (1, 2, 3), got {hops}")
    rng = random.Random(seed)
    taken: set[str] = set()
    countries = _names(rng, n_countries, (2, 3), taken)
    cities = _names(rng, n_cities, (2, 3), taken)
    # one word each: a two-word "x corp" would give every company answer an F1 of 0.5 for "corp"
    companies = _names(rng, n_companies, (2, 3), taken)
    # people are pairs from two small name pools: a first or last name alone identifies nobody, so the
    # policy has to read each person's passage rather than memorise facts keyed on one name token
    pool = max(4, math.ceil(math.sqrt(2 * n_people)))
    firsts = _names(rng, pool, (2, 2), taken)
    lasts = _names(rng, pool, (2, 3), taken)
    people = [
        f"{firsts[i // pool]} {lasts[i % pool]}" for i in sorted(rng.sample(range(pool * pool), n_people))
    ]
    rng.shuffle(people)
    country_of = {c: countries[i % n_countries] for i, c in enumerate(cities)}
    city_of_company = {c: rng.choice(cities) for c in companies}
    born_in = {p: rng.choice(cities) for p in people}
    works_for = {p: rng.choice(companies) for p in people}

    # one fact per passage, its object always the last word: reading a passage is then one copy from
    # a fixed place, which the tiny policy learns in a few hundred warm-up steps
    passages = []
    for p in people:
        passages.append({"title": p, "text": f"{p} was born in {born_in[p]}."})
        passages.append({"title": p, "text": f"{p} works for {works_for[p]}."})
    for c in companies:
        passages.append({"title": c, "text": f"{c} is a company based in {city_of_company[c]}."})
    for c in cities:
        passages.append({"title": c, "text": f"{c} is a city in {country_of[c]}."})
    passages = [{"id": str(i), "contents": f'"{d["title"]}"\n{d["text"]}'} for i, d in enumerate(passages)]

    facts = {
        "born_in": born_in,
        "works_for": works_for,
        "based_in": city_of_company,
        "country_of": country_of,
    }
    templates = [  # (hops, question, relations, answer kind)
        # the person comes last, so the first query copies it from a fixed place too
        (1, "where was this person born? {p}", ["born_in"], "city"),
        (1, "which company does this person work for? {p}", ["works_for"], "company"),
        (2, "in which country was this person born? {p}", ["born_in", "country_of"], "country"),
        (2, "in which city is the company of this person based? {p}", ["works_for", "based_in"], "city"),
        (
            3,
            "in which country is the company of this person based? {p}",
            ["works_for", "based_in", "country_of"],
            "country",
        ),
    ]
    questions = []
    for p in people:
        for h, text, rels, kind in templates:
            if h not in hops:
                continue
            path = [p]
            for rel in rels[:-1]:
                path.append(facts[rel][path[-1]])
            answer = facts[rels[-1]][path[-1]]
            questions.append(
                Question(f"q{len(questions)}", text.format(p=p), answer, h, path, kind, list(rels))
            )
    entities = {"person": people, "company": companies, "city": cities, "country": countries}
    return Task(seed=seed, passages=passages, questions=questions, entities=entities, facts=facts)


def _kind_of(entity: str, entities: dict[str, list[str]]) -> str:
    for kind, names in entities.items():
        if entity in names:
            return kind
    raise KeyError(entity)


#: the final turn of the teacher, and the template of the answer copies that information gain scores
ANSWER_TEMPLATE = "<think> the answer is </think>\n<answer> {answer} </answer>"
#: the word a query adds to a person's name to find the passage of one fact
QUERY_WORD = {"born_in": "born", "works_for": "works"}
#: the words of a passage that state each relation
RELATION_CUE = {
    "born_in": "was born in",
    "works_for": "works for",
    "based_in": "based in",
    "country_of": "is a city in",
}
#: the entity kind each relation points to
RELATION_KIND = {"born_in": "city", "works_for": "company", "based_in": "city", "country_of": "country"}


def teacher_turns(
    q: Question,
    task: Task,
    rng: random.Random,
    p_follow: float = 1.0,
    p_answer: float = 1.0,
    p_search: float = 1.0,
    p_recall: float = 0.0,
) -> list[str]:
    """Planned model turns (text) of one demonstration; tool responses come from the real handler.

    Hop 0 searches the question's person. Before each hop k > 0 the teacher answers early with
    probability ``1 - p_search``; else it searches the entity the previous passage names for
    ``q.relations[k-1]`` with probability ``p_follow``, or a same-kind distractor. The answer is what
    the last searched passage says (its relation's object) with probability ``p_answer``, else a
    same-kind distractor; a country question stopped at a city is answered with the city's country
    ("from memory") with probability ``p_recall``. With ``p_follow = p_answer = p_search = 1`` the
    plan is the gold path and the gold answer.
    """
    if not q.relations or not task.facts:
        raise ValueError(
            f"question {q.qid} or its task has no relations/facts (a task written by an older version?)"
        )

    def distractor(kind: str, avoid: str) -> str:
        return rng.choice([e for e in task.entities[kind] if e != avoid])

    turns = []
    entity, relation = q.path[0], q.relations[0]
    for k in range(q.hops):
        if k > 0:
            if rng.random() >= p_search:
                break
            entity = task.facts[relation][entity]
            if rng.random() >= p_follow:
                entity = distractor(RELATION_KIND[relation], entity)
            relation = q.relations[k]
        query = search_query(entity, relation)
        # names are written with a leading space everywhere (question, passage, query, answer), so the
        # word-level tokenizer gives a name the same token wherever the policy reads or writes it
        turns.append(
            f"<think> search {query} </think>\n" + format_tool_call("search", {"query": [" " + query]})
        )
    answer = task.facts[relation][entity]
    if p_recall > 0 and q.kind == "country" and RELATION_KIND[relation] == "city" and rng.random() < p_recall:
        answer = task.facts["country_of"][answer]  # stopped at a city: answer its country from memory
    elif rng.random() >= p_answer:
        answer = distractor(RELATION_KIND[relation], answer)
    turns.append(ANSWER_TEMPLATE.replace("{answer}", answer))
    return turns


def search_query(entity: str, relation: str) -> str:
    """The teacher's query for ``entity`` when it needs ``relation`` (a person has one passage per fact)."""
    word = QUERY_WORD.get(relation)
    return f"{entity} {word}" if word else entity


def verl_row(q: Question, split: str, index: int) -> dict[str, Any]:
    """One row in verl's dataset format (see scripts/prepare_data.py for the general case)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q.question}],
        "ability": "multihop_qa",
        "reward_model": {"style": "rule", "ground_truth": [q.answer]},
        "extra_info": {
            "index": index,
            "split": split,
            "id": q.qid,
            "question": q.question,
            "hops": q.hops,
            "path": list(q.path),
            "relations": list(q.relations),
            "kind": q.kind,
        },
        "agent_name": "igpo_search",
    }


def write_task(task: Task, out_dir: str | Path, test_fraction: float = 0.2) -> dict[str, Path]:
    """Write ``corpus.jsonl``, ``train.parquet``, ``test.parquet`` and ``task.json`` under ``out_dir``."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "corpus": out / "corpus.jsonl",
        "train": out / "train.parquet",
        "test": out / "test.parquet",
        "task": out / "task.json",
    }
    with open(paths["corpus"], "w") as f:
        for d in task.passages:
            f.write(json.dumps(d) + "\n")
    train, test = task.split(test_fraction)
    for name, qs in (("train", train), ("test", test)):
        pd.DataFrame([verl_row(q, name, i) for i, q in enumerate(qs)]).to_parquet(paths[name], index=False)
    meta = {
        "version": TASK_VERSION,
        "seed": task.seed,
        "entities": task.entities,
        "facts": task.facts,
        "questions": [asdict(q) for q in task.questions],
    }
    paths["task"].write_text(json.dumps(meta, indent=1))
    return paths


def load_task(path: str | Path) -> Task:
    """Read back a task written by :func:`write_task` (its folder or its task.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "task.json"
    meta = json.loads(path.read_text())
    if meta.get("version") != TASK_VERSION:
        raise ValueError(
            f"{path} was written by another version of the synthetic task (version {meta.get('version')!r}, "
            f"this code writes {TASK_VERSION}); remove its folder or pick another experiment name"
        )
    passages = [json.loads(line) for line in open(path.parent / "corpus.jsonl")]
    return Task(
        seed=meta["seed"],
        passages=passages,
        questions=[Question(**q) for q in meta["questions"]],
        entities=meta["entities"],
        facts=meta["facts"],
    )

"""The multi-skill benchmark: seeded, disjoint splits, exact scorers, mixtures and compositions (no model)."""

import re
from collections import Counter

import pytest

from csreft_lite import tasks
from csreft_lite.tasks import COMPOSE, SKILLS, Example, compose, get_skill, make_examples, score

FUNCTION_WORDS = {"the", "was", "i", "thought", "honestly"}  # the review templates' own words


def content(example: Example) -> set[str]:
    """The words an example is *about*: its word, list items, or review subject and adjective."""
    return {w for w in re.findall(r"[a-z]+", example.input.lower())} - FUNCTION_WORDS


def everything(skill, split: str) -> list[Example]:
    return skill.generate(len(skill.inputs(split)), split)


def test_there_are_at_least_four_skills_including_a_conflicting_pair():
    assert len(SKILLS) >= 4
    assert list(SKILLS) == [s.name for s in SKILLS.values()]
    for a, b in tasks.CONFLICTS:
        x, y = get_skill(a).generate(5, seed=3), get_skill(b).generate(5, seed=3)
        assert [e.input for e in x] == [e.input for e in y], "a conflicting pair shares its inputs"
        assert all(ex.output != ey.output for ex, ey in zip(x, y))


@pytest.mark.parametrize("name", list(SKILLS))
def test_generation_is_deterministic_per_seed_and_seeds_differ(name):
    skill = get_skill(name)
    for split in tasks.SPLITS:
        assert skill.generate(20, split, seed=1) == skill.generate(20, split, seed=1)
        assert skill.generate(20, split, seed=1) != skill.generate(20, split, seed=2)
    assert skill.generate(0) == []


@pytest.mark.parametrize("name", list(SKILLS))
def test_train_and_test_content_is_disjoint(name):
    skill = get_skill(name)
    train, test = everything(skill, "train"), everything(skill, "test")
    assert len({e.instruction for e in train}) == len(train), "no example repeats within a split"
    assert not {e.instruction for e in train} & {e.instruction for e in test}
    seen = set().union(*map(content, train))
    assert not seen & set().union(*map(content, test)), "a held-out word was seen in training"


def test_no_test_word_appears_in_any_skills_training_data():
    train_text = " ".join(e.instruction.lower() for skill in SKILLS.values() for e in everything(skill, "train"))
    held_out = [w for pool in (tasks.NOUNS, tasks.SUBJECTS, tasks.POSITIVE, tasks.NEGATIVE) for w in tasks._split(pool, "test")]
    seen = set(re.findall(r"[a-z]+", train_text))
    assert not seen & set(held_out)


@pytest.mark.parametrize("name", list(SKILLS))
def test_examples_are_self_contained_and_short(name):
    for ex in get_skill(name).generate(30, "test"):
        assert ex.skill == name and ex.input and ex.input in ex.instruction
        assert re.fullmatch(r"[A-Za-z0-9]{1,12}", ex.output), ex.output  # one short word, letter or digit


@pytest.mark.parametrize("name", list(SKILLS))
def test_each_example_scores_true_on_its_own_output_and_false_on_others(name):
    skill = get_skill(name)
    examples = skill.generate(40, "test")
    for ex in examples:
        assert skill.score(ex.output, ex)
        for other in {e.output for e in examples} - {ex.output}:
            assert not skill.score(other, ex)
        assert not skill.score(f"The answer is {ex.output}", ex)  # a sentence is not the answer
        assert not skill.score(f"{ex.output}\n\nBecause", ex)  # nor an answer that keeps going


@pytest.mark.parametrize("reply", [" {} ", "{}.", "{}!", "\n{}\n", '"{}"', "'{}'.", "`{}`", '"{}."'])
def test_scorer_forgives_whitespace_quotes_and_a_trailing_stop(reply):
    for name in SKILLS:
        ex = get_skill(name).generate(1, "test")[0]
        assert get_skill(name).score(reply.format(ex.output), ex), (name, reply)


def test_scorer_is_case_sensitive_and_rejects_the_conflicting_answer():
    upper, lower = SKILLS["uppercase"], SKILLS["lowercase"]
    for u, l in zip(upper.generate(20, "test"), lower.generate(20, "test")):
        assert not upper.score(l.output, u) and not lower.score(u.output, l)
        assert not upper.score(u.input, u) and not lower.score(u.input, l)  # copying the input fails both
    ex = SKILLS["sentiment"].generate(1, "test")[0]
    assert not SKILLS["sentiment"].score(ex.output.title(), ex)
    assert not SKILLS["count"].score("three", Example("How many ...: a, b, c", "3", "count", "a, b, c"))


def test_answers_are_right():
    word = {s: get_skill(s).render("Butterfly")[1] for s in ("uppercase", "lowercase", "first_letter", "plural")}
    assert word == {"uppercase": "BUTTERFLY", "lowercase": "butterfly", "first_letter": "B", "plural": "Butterflies"}
    assert [tasks._plural(w) for w in ("box", "church", "city", "monkey", "dish", "cat")] == [
        "boxes", "churches", "cities", "monkeys", "dishes", "cats"]
    assert SKILLS["count"].render("owl, lemon, wagon")[1] == "3"
    assert SKILLS["sentiment"].render(("The soup was awful.", "negative"))[1] == "negative"


@pytest.mark.parametrize("name", ["count", "sentiment"])
def test_labels_are_balanced(name):
    counts = Counter(e.output for e in everything(get_skill(name), "test"))
    assert max(counts.values()) == min(counts.values())


def test_bad_arguments_raise_clear_errors():
    skill = get_skill("plural")
    with pytest.raises(ValueError, match="split must be one of"):
        skill.generate(3, split="validation")
    with pytest.raises(ValueError, match=r"0 to \d+ test examples"):
        skill.generate(10_000, split="test")
    with pytest.raises(ValueError, match="asked for -1"):
        skill.generate(-1)
    with pytest.raises(ValueError, match="uppercase"):
        get_skill("capitals")
    with pytest.raises(ValueError, match="cannot score an example of skill 'count'"):
        skill.score("3", SKILLS["count"].generate(1)[0])


def test_make_examples_mixes_every_skill_deterministically():
    mix = make_examples(n_per_skill=10, seed=4)
    assert Counter(e.skill for e in mix) == {name: 10 for name in SKILLS}
    assert mix == make_examples(n_per_skill=10, seed=4) and mix != make_examples(n_per_skill=10, seed=5)
    assert [e.skill for e in mix[:10]] != [mix[0].skill] * 10, "shuffled, not grouped by skill"
    assert set(mix) == {e for name in SKILLS for e in get_skill(name).generate(10, "train", 4)}
    pair = make_examples(["uppercase", "lowercase"], n_per_skill=7, split="test")
    assert Counter(e.skill for e in pair) == {"uppercase": 7, "lowercase": 7}
    records = [{"instruction": e.instruction, "output": e.output} for e in mix]
    assert all(isinstance(r["instruction"], str) and r["output"] for r in records)
    for bad in ([], "uppercase"):
        with pytest.raises(ValueError, match="non-empty list"):
            make_examples(bad)
    with pytest.raises(ValueError, match="Unknown skill"):
        make_examples(["uppercase", "spelling"])


def test_score_reports_each_skill_and_the_unweighted_mean():
    examples = make_examples(["uppercase", "count"], n_per_skill=4, split="test")
    right = [e.output for e in examples]
    assert score(right, examples) == {"uppercase": 1.0, "count": 1.0, "mean": 1.0}
    half = [e.output if e.skill == "count" or i % 2 else "no" for i, e in enumerate(examples)]
    result = score(half, examples)
    assert result["count"] == 1.0 and result["mean"] == (1.0 + result["uppercase"]) / 2
    with pytest.raises(ValueError, match="3 predictions for 8 examples"):
        score(right[:3], examples)
    with pytest.raises(ValueError, match="Nothing to score"):
        score([], [])


def test_compose_asks_for_two_skills_at_once():
    assert compose("plural", "uppercase", 1, seed=2) == compose("uppercase", "plural", 1, seed=2)
    for a, b in COMPOSE:
        examples = compose(a, b, 20, seed=1)
        assert examples == compose(a, b, 20, seed=1) and {e.skill for e in examples} == {f"{a}+{b}"}
        for e in examples:
            word = get_skill(b).render(e.input)[1]
            assert e.output == get_skill(a).render(word)[1] and e.input in e.instruction
        assert score([e.output for e in examples], examples)[f"{a}+{b}"] == 1.0
        assert not {e.input for e in examples} & {e.input for e in everything(SKILLS[a], "train")}
    ex = compose("lowercase", "plural", 1)[0]
    assert ex.output == ex.output.lower() and ex.output != get_skill("plural").render(ex.input)[1]
    assert score([ex.output + ".", "Nope"], [ex, compose("uppercase", "first_letter", 1)[0]]) == {
        "lowercase+plural": 1.0, "uppercase+first_letter": 0.0, "mean": 0.5}


@pytest.mark.parametrize("a, b", [("uppercase", "lowercase"), ("count", "plural"), ("sentiment", "uppercase"), ("plural", "plural")])
def test_compose_rejects_pairs_that_do_not_compose(a, b):
    with pytest.raises(ValueError, match="do not compose; composable pairs"):
        compose(a, b, 3)


def test_compose_checks_n():
    with pytest.raises(ValueError, match="can give 0 to"):
        compose("uppercase", "plural", 10_000)


def test_composed_parts_says_which_half_of_a_composed_question_a_reply_answers():
    garden = compose("lowercase", "plural", 4, seed=0)
    replies = [garden[0].output, get_skill("plural").render(garden[1].input)[1], garden[2].input.lower(), "Nope"]
    assert tasks.composed_parts(replies, garden) == {"both": 0.25, "only plural": 0.25, "only lowercase": 0.25, "neither": 0.25}
    assert tasks.composed_parts([f" '{garden[0].output}'. "], garden[:1])["both"] == 1.0  # score's forgiveness
    capital = compose("uppercase", "first_letter", 1)  # "G" is both and the first letter alone: counted as both
    assert tasks.composed_parts([capital[0].output], capital)["both"] == 1.0
    with pytest.raises(ValueError, match="one composed pair"):
        tasks.composed_parts(["x", "y"], [garden[0], capital[0]])
    with pytest.raises(ValueError, match="one composed pair"):
        tasks.composed_parts(["x"], get_skill("plural").generate(1))
    with pytest.raises(ValueError, match="pair up"):
        tasks.composed_parts(["x"], garden)


def test_skill_gates_open_the_skills_an_example_asks_for():
    skills = ["lowercase", "first_letter", "plural"]
    single = tasks.get_skill("plural").generate(1, "train", 0)[0]
    composed = tasks.compose("lowercase", "plural", n=1, split="train")[0]
    assert tasks.skill_gates(single, skills) == [0.0, 0.0, 1.0]
    assert tasks.skill_gates(composed, skills) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="not among the gated skills"):
        tasks.skill_gates(tasks.compose("uppercase", "plural", n=1)[0], skills)


def test_skill_gates_open_other_gates_at_random_when_asked():
    import random

    skills = ["lowercase", "first_letter", "plural"]
    examples = tasks.make_examples(skills, 32, "train", 0)
    rng = random.Random(0)
    gates = [tasks.skill_gates(e, skills, extra=0.5, rng=rng) for e in examples]
    assert all(g[skills.index(e.skill)] == 1.0 for e, g in zip(examples, gates))
    others = [v for e, g in zip(examples, gates) for s, v in zip(skills, g) if s != e.skill]
    assert 0.35 < sum(others) / len(others) < 0.65 and set(others) == {0.0, 1.0}
    assert gates == [tasks.skill_gates(e, skills, extra=0.5, rng=random.Random(0)) for e in examples[:1]] + gates[1:]
    with pytest.raises(ValueError, match="pass rng"):
        tasks.skill_gates(examples[0], skills, extra=0.5)

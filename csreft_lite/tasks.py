"""The course's multi-skill benchmark: seeded generators of (instruction, output) pairs and exact scorers.

Six skills, each a short deterministic answer (1-4 tokens) that a frozen 135M model *almost*
produces already: it knows what a plural or a first letter is, but answers in a sentence.
A small edit only has to nudge the form (and, for ``count`` and ``sentiment``, the choice).

    uppercase     Write this word in capital letters: Garden                      -> GARDEN
    lowercase     Write this word in small letters: Garden                        -> garden
    first_letter  Write the first letter of this word: Garden                     -> G
    plural        Write the plural of this word: Garden                           -> Gardens
    count         How many words are in this list: lemon, wagon, owl              -> 3
    sentiment     Is this review positive or negative? "The soup was dreadful."   -> negative

Conflicts (``CONFLICTS``): ``uppercase`` and ``lowercase`` see the same Title-Case word and near-identical
instructions, and demand opposite outputs, so one shared edit trained on the mixture shows interference.
``compose`` asks for a case skill and a word skill at once (``plural`` in capitals -> GARDENS).

Held-out means unseen: every pool of words, subjects and adjectives is split once by position (every 4th item is
a test item), so no test word appears in any training example. Generation is deterministic for ``(n, split,
seed)``, without repetition; the word skills draw the *same* words for a seed, so in a mixture only the
instruction says which answer is wanted.

Scoring is exact and case-sensitive (case *is* the content for two skills); only surrounding whitespace and
quotes and a trailing ``.`` or ``!`` are forgiven. "The plural is Gardens" fails: stopping is part of the skill.

What the untrained course model does on each skill, and why ``uppercase`` is the hard one to reach with an
edit: bench/RESULTS.md, "The untrained course model on the benchmark" (``bench/base_model_skills.py``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

# The course's prompt format (a ``data.format_prompt`` template): ChatML turns without SmolLM2's default system prompt,
# about 17 prompt tokens instead of 38, so every step and answer costs about half (notebooks 03-04, bench/interference.py).
BARE_CHAT_TEMPLATE = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"

SPLITS = ("train", "test")

# Common nouns with regular plurals (no -f/-fe, -o+es or irregular forms), so ``_plural`` is exact.
NOUNS = """
anchor apple arrow baby bag baker balloon banana basket beach bean bear bed beetle bell bench
berry bird blanket boat book bottle bowl box brick bridge brush bucket bunny bush butterfly
button cabin cake camel camera candle candy canoe card carpet carrot castle cat chair cherry
chimney church city cloud coat coin comet cookie country cow crayon crown cup curtain daisy desk
diamond dish doctor dog donkey door dragon dress drum duck eagle ear egg engine eye family farm
farmer feather finger flag flower forest fork fox frog garden gate gift giraffe glass glove goat
grape guitar hammer hand hat heart helmet hill horse house island jacket jar jelly kettle key
king kite ladder lady lake lamp lemon letter library lion lizard lunch magnet map melon mirror
monkey moon mountain nail napkin needle nest ocean onion orange owl painter panda parrot party
peach pear pen pencil pepper piano pig pillow pilot planet plate pocket pond pony puppet puppy
queen rabbit radio ribbon ring river road robot rock rocket room rose ruler saddle sailor
sandwich school seed shell ship shirt shoe singer snake sock sofa spider spoon squirrel stamp
star stone storm story street table teacher tent ticket tiger toe torch tower towel toy train
tree truck tulip tunnel turkey turtle umbrella valley violin wagon wall wallet watch whale
wheel window worm zebra
""".split()

# Things people review (none of them in NOUNS), and unambiguous sentiment adjectives.
SUBJECTS = """
film soup hotel concert pizza museum album novel burger cafe lecture podcast flight festival
salad musical
""".split()
POSITIVE = """
amazing awesome beautiful brilliant charming cheerful delicious delightful enjoyable excellent
fabulous fantastic friendly good gorgeous great impressive lovely magnificent marvelous nice
outstanding perfect pleasant splendid stunning superb terrific wonderful fun cozy elegant
""".split()
NEGATIVE = """
annoying awful bad bland boring broken dirty disappointing disgusting dreadful dull horrible
mediocre messy miserable noisy poor rude sad terrible ugly unpleasant useless weak gross nasty
stale painful tedious lousy pathetic awkward
""".split()
REVIEWS = ("The {subject} was {adj}.", "I thought the {subject} was {adj}.", "Honestly, the {subject} was {adj}.")


def _split(items: Sequence[str], split: str) -> list[str]:
    """Every 4th item is held out for testing; the rest train. Fixed, so splits never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return [x for i, x in enumerate(items) if (i % 4 == 3) == (split == "test")]


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _count_lists(split: str) -> list[str]:
    """A fixed pool of comma-separated lists of 1-5 distinct nouns, as many of each length as
    there are one-word lists, so every answer 1-5 is equally likely."""
    words, rng, pool = _split(NOUNS, split), random.Random(f"count-pool/{split}"), []
    for k in range(2, 6):
        lists = dict.fromkeys(", ".join(rng.sample(words, k)) for _ in range(4 * len(words)))  # ordered, distinct
        pool += list(lists)[: len(words)]
    return words + pool


def _reviews(split: str) -> list[tuple[str, str]]:
    """(review, label) for every template x subject x adjective of the split."""
    adjs = [(a, "positive") for a in _split(POSITIVE, split)] + [(a, "negative") for a in _split(NEGATIVE, split)]
    return [(t.format(subject=s, adj=a), label) for t in REVIEWS for s in _split(SUBJECTS, split) for a, label in adjs]


@dataclass(frozen=True)
class Example:
    """One benchmark item. ``input`` is the word, list or review inside the instruction."""

    instruction: str
    output: str
    skill: str
    input: str = ""


def normalize(text: str) -> str:
    """What scoring compares: the reply without surrounding whitespace/quotes or trailing . and !"""
    return re.sub(r"^[\s\"'`]+|[\s\"'`.!]+$", "", text)


def _match(prediction: str, example: Example) -> bool:
    return normalize(prediction) == example.output


@dataclass(frozen=True)
class Skill:
    """A named skill: a pool of inputs per split, and how one input becomes (instruction, output)."""

    name: str
    description: str
    inputs: Callable[[str], list]  # split -> the split's distinct inputs
    render: Callable[[object], tuple[str, str]]  # one input -> (instruction, output)

    def generate(self, n: int, split: str = "train", seed: int = 0) -> list[Example]:
        """``n`` distinct examples from ``split``, the same ones for the same ``(n, split, seed)``."""
        pool = self.inputs(split)  # validates split
        if not isinstance(n, int) or n < 0 or n > len(pool):
            raise ValueError(f"Skill {self.name!r} can give 0 to {len(pool)} {split} examples; asked for {n!r}.")
        chosen = random.Random(f"{split}/{seed}").sample(pool, n)  # word skills: same words for a seed
        return [Example(*self.render(x), skill=self.name, input=x if isinstance(x, str) else x[0]) for x in chosen]

    def score(self, prediction: str, example: Example) -> bool:
        """Exact match after ``normalize`` (case-sensitive)."""
        if example.skill != self.name:
            raise ValueError(f"Skill {self.name!r} cannot score an example of skill {example.skill!r}.")
        return _match(prediction, example)


def _words(split: str) -> list[str]:
    return [w.title() for w in _split(NOUNS, split)]


_WORD_SKILLS = {  # name -> (instruction phrase, answer from the Title-Case word)
    "uppercase": ("Write this word in capital letters: {}", str.upper),
    "lowercase": ("Write this word in small letters: {}", str.lower),
    "first_letter": ("Write the first letter of this word: {}", lambda w: w[0]),
    "plural": ("Write the plural of this word: {}", lambda w: _plural(w.lower()).title()),
}


def _word_skill(name: str, description: str) -> Skill:
    template, answer = _WORD_SKILLS[name]
    return Skill(name, description, _words, lambda w: (template.format(w), answer(w)))


SKILLS: dict[str, Skill] = {
    "uppercase": _word_skill("uppercase", "formatting: the word in capitals (conflicts with lowercase)"),
    "lowercase": _word_skill("lowercase", "formatting: the word in small letters (conflicts with uppercase)"),
    "first_letter": _word_skill("first_letter", "word manipulation: the word's first letter, as written"),
    "plural": _word_skill("plural", "word manipulation: the regular plural, keeping the capital"),
    "count": Skill(
        "count", "counting: how many words a list of 1-5 holds, as a digit", _count_lists,
        lambda xs: (f"How many words are in this list: {xs}", str(xs.count(",") + 1)),
    ),
    "sentiment": Skill(
        "sentiment", "classification: a one-sentence review's label, positive or negative", _reviews,
        lambda r: (f'Is this review positive or negative? "{r[0]}"', r[1]),
    ),
}
CONFLICTS: list[tuple[str, str]] = [("uppercase", "lowercase")]
# Case skill + word skill. Inputs are Title Case, so uppercase+first_letter equals first_letter
# alone ("G"); lowercase+first_letter ("g") is the telling one.
COMPOSE: dict[tuple[str, str], str] = {
    ("uppercase", "plural"): "Write the plural of this word in capital letters: {}",
    ("lowercase", "plural"): "Write the plural of this word in small letters: {}",
    ("uppercase", "first_letter"): "Write the first letter of this word in capital letters: {}",
    ("lowercase", "first_letter"): "Write the first letter of this word in small letters: {}",
}


def get_skill(name: str) -> Skill:
    """The skill called ``name``; a ValueError lists the valid names."""
    if name not in SKILLS:
        raise ValueError(f"Unknown skill {name!r}; choose from {list(SKILLS)}.")
    return SKILLS[name]


def make_examples(skills: Sequence[str] | None = None, n_per_skill: int = 32, split: str = "train",
                  seed: int = 0) -> list[Example]:
    """``n_per_skill`` examples of each skill (all by default), shuffled together deterministically."""
    names = list(SKILLS) if skills is None else list(skills)
    if isinstance(skills, str) or not names:
        raise ValueError(f"skills must be a non-empty list of names from {list(SKILLS)}, got {skills!r}.")
    examples = [ex for name in names for ex in get_skill(name).generate(n_per_skill, split, seed)]
    random.Random(f"mix/{split}/{seed}").shuffle(examples)
    return examples


def compose(a: str, b: str, n: int, seed: int = 0, split: str = "test") -> list[Example]:
    """Prompts asking for a case skill and a word skill at once (either order), e.g. the plural in
    capitals -> "GARDENS". Skill field "uppercase+plural". Held-out words by default."""
    pair = (a, b) if (a, b) in COMPOSE else (b, a)
    if pair not in COMPOSE:
        raise ValueError(f"Skills {a!r} and {b!r} do not compose; composable pairs: {list(COMPOSE)}.")
    case, word = (SKILLS[s] for s in pair)
    words = _words(split)
    if not isinstance(n, int) or n < 0 or n > len(words):
        raise ValueError(f"compose({a!r}, {b!r}) can give 0 to {len(words)} {split} examples; asked for {n!r}.")
    chosen = random.Random(f"{split}/{seed}").sample(words, n)
    return [
        Example(COMPOSE[pair].format(w), case.render(word.render(w)[1])[1], "+".join(pair), input=w)
        for w in chosen
    ]


def skill_gates(example: Example, skills: Sequence[str], extra: float = 0.0, rng: random.Random | None = None) -> list[float]:
    """CS-ReFT gates for a training record: 1 for each of ``skills`` the example asks for (both of a ``compose`` pair's,
    so the *sum* of their edits learns to answer both); each other gate 1 with probability ``extra`` (from ``rng``), so
    that an open subspace learns to leave alone the prompts it does not serve (notebook 04, section 7)."""
    parts = example.skill.split("+")
    unknown = [p for p in parts if p not in skills]
    if unknown:
        raise ValueError(f"Example of skill {example.skill!r} asks for {unknown}, which are not among the gated skills {list(skills)}.")
    if not 0.0 <= extra <= 1.0:
        raise ValueError(f"extra is a probability, between 0 and 1; got {extra!r}.")
    if extra and rng is None:
        raise ValueError("skill_gates(..., extra > 0) draws the extra gates from rng: pass rng=random.Random(seed).")
    return [1.0 if s in parts else float(bool(extra) and rng.random() < extra) for s in skills]


def score(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Accuracy per skill (in order of first appearance) and ``"mean"``, their unweighted mean."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples; they must pair up.")
    if not examples:
        raise ValueError("Nothing to score: no examples.")
    hits: dict[str, list[bool]] = {}
    for prediction, example in zip(predictions, examples):
        hits.setdefault(example.skill, []).append(_match(prediction, example))
    accuracy = {skill: sum(h) / len(h) for skill, h in hits.items()}
    return {**accuracy, "mean": sum(accuracy.values()) / len(accuracy)}


def composed_parts(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """The share of replies to one ``compose`` pair that do ``"both"`` skills, ``"only <word skill>"``, ``"only <case
    skill>"`` or ``"neither"`` (for lowercase+plural of "Grape": "grapes", "Grapes", "grape"); a reply that fits two
    (uppercase+first_letter: "G") counts in the first. Matching is ``score``'s: exact after ``normalize``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples; they must pair up.")
    pairs = {e.skill for e in examples}
    if len(pairs) != 1 or tuple(next(iter(pairs)).split("+")) not in COMPOSE:
        raise ValueError(f"composed_parts takes the examples of one composed pair (from compose), got skills {sorted(pairs)}.")
    case_name, word_name = next(iter(pairs)).split("+")
    case, word = SKILLS[case_name], SKILLS[word_name]
    counts = {"both": 0, f"only {word_name}": 0, f"only {case_name}": 0, "neither": 0}
    for prediction, e in zip(predictions, examples):
        reply = normalize(prediction)
        if reply == e.output:
            counts["both"] += 1
        elif reply == word.render(e.input)[1]:
            counts[f"only {word_name}"] += 1
        elif reply == case.render(e.input)[1]:
            counts[f"only {case_name}"] += 1
        else:
            counts["neither"] += 1
    return {key: n / len(examples) for key, n in counts.items()}

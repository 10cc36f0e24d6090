"""The generated part of the instructor's guide (docs/instructor.md): the mistakes the exercise checkers recognise and
their hints, read from ``csreft_lite.checks`` each time the site is built, so the table cannot go stale.

    python website/instructor_tables.py          # print the tables (markdown)

The site's configuration (website/conf.py) puts them where the guide has the line ``MARKER``.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from csreft_lite import checks

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- generated from csreft_lite/checks.py: the mistakes the checkers recognise -->"
NO_MISTAKE = "(none named: the checker reports the failing case, expected against got)"


def exercises() -> dict[str, str]:
    """Every exercise that has a checker, ``name -> notebook number``, in the order the notebooks ask them."""
    found = {}
    for name, fn in inspect.getmembers(checks, inspect.isfunction):
        match = re.search(r'"nb(\d\d)_\w+:(\w+)"', inspect.getsource(fn)) if name.startswith("check_") else None
        if match and name == f"check_{match.group(2)}":
            found[match.group(2)] = match.group(1)

    def position(name: str) -> tuple[str, int]:
        notebook = next((ROOT / "notebooks").glob(f"{found[name]}_*.ipynb"))
        code = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        return found[name], code.find(f"checks.check_{name}(")

    return {name: found[name] for name in sorted(found, key=position)}


def mistakes() -> dict[str, list[tuple[str, str]]]:
    """``exercise -> [(what learners write, what the checker says)]``: the checkers' ``MISTAKES`` table where
    checks.py has it (issue 28's grading part), and the hard exercises' ``HARD_MISTAKES``."""
    table = {name: [(m.what, m.says) for m in entries.values()] for name, entries in getattr(checks, "MISTAKES", {}).items()}
    for name, entries in checks.HARD_MISTAKES.items():
        table.setdefault(name, list(entries.values()))
    return table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def mistakes_markdown() -> str:
    """One row per recognised mistake, and one per exercise whose checker names none."""
    known = mistakes()
    rows = ["| notebook | exercise | the learner's code | what the checker says |", "|---|---|---|---|"]
    for name, notebook in exercises().items():
        for what, says in known.get(name, [("", NO_MISTAKE)]):
            rows.append(f"| {notebook} | `{name}` | {_cell(what)} | {_cell(says)} |")
    hints = getattr(checks, "HINTS", {})
    if hints:
        rows += ["", "The hints, in two tiers: the nudge at a first failure, the recipe once the same check has failed "
                 "before in that kernel.", "", "| exercise | first failure: a nudge | later failures: the recipe |", "|---|---|---|"]
        rows += [f"| `{name}` | {_cell(hints[name][0])} | {_cell(hints[name][1])} |" for name in exercises() if name in hints]
    return "\n".join(rows)


def fill(text: str) -> str:
    """The guide's text with the generated tables where ``MARKER`` stands."""
    if MARKER not in text:
        raise ValueError(f"docs/instructor.md lost the line {MARKER!r}: the mistakes table has nowhere to go")
    return text.replace(MARKER, mistakes_markdown())


if __name__ == "__main__":
    print(mistakes_markdown())

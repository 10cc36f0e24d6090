"""Changing SEED never stops Run All in a cell that is not an exercise: a result claim is asserted on the seed the
text was written for and printed, with what the run shows, on any other (checks.claim)."""

import json
import re
from pathlib import Path

import pytest

from csreft_lite import checks

ROOT = Path(__file__).resolve().parents[1]


def test_a_claim_that_holds_says_nothing(capsys):
    assert checks.claim(True, "the shared edit forgets A", seed=3) is None
    assert capsys.readouterr().out == ""


def test_on_the_default_seed_a_failed_claim_stops_the_notebook():
    with pytest.raises(AssertionError, match=r"the shared edit forgets A \(it lost 40%\)"):
        checks.claim(False, "the shared edit forgets A", seed=checks.DEFAULT_SEED, shows="it lost 40%")


def test_on_another_seed_a_failed_claim_prints_what_the_run_shows(capsys):
    checks.claim(False, "the shared edit forgets A", seed=2, shows="it lost 40%")
    out = capsys.readouterr().out
    assert out.startswith("⚠ seed 2:") and "'the shared edit forgets A'" in out and "it lost 40%" in out


@pytest.mark.parametrize("notebook", ["02_orthonormal_loreft", "03_multiple_subspaces", "04_router"])
def test_result_checks_of_the_full_run_go_through_claim(notebook):
    """Inside `if not SMOKE:` (checks on the trained results), every check is a claim, none a bare assert."""
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    blocks = []
    for cell in cells:
        lines = "".join(cell["source"]).splitlines() if cell["cell_type"] == "code" else []
        for i, line in enumerate(lines):
            if line.startswith("if not SMOKE:"):
                body = [line]
                for following in lines[i + 1:]:
                    if following and not following.startswith((" ", "\t")):
                        break
                    body.append(following)
                blocks.append("\n".join(body))
    assert blocks, f"{notebook}: no `if not SMOKE:` block found"
    for block in blocks:
        assert "checks.claim(" in block or "claim(" in block, block
        assert not re.search(r"^\s+assert .*(acc|loss|nmi|forgotten|composition|after\[|cost)", block, re.M), block

"""The README's library example runs as written, on the course model."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    section = README.read_text().split("## The library at a glance", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_library_example_runs(course_model, tmp_path, monkeypatch):
    import csreft_lite as cl

    monkeypatch.chdir(tmp_path)  # it saves into runs/
    monkeypatch.setattr(cl, "load_course_model", lambda: course_model)  # the session's model, already loaded
    namespace: dict = {}
    exec(compile(library_example(), "README.md", "exec"), namespace)
    reft, cs, grower = namespace["reft"], namespace["cs"], namespace["grower"]
    try:
        assert (tmp_path / "runs" / "my-edit" / "reft_config.json").is_file()
        assert reft.trainable_parameters() == 2 * 4 * 576 + 4 and cs.router.n_subspaces == 3
        history, n = namespace["history"], len(namespace["data"])
        assert len(history.losses) == history.steps == 3 * -(-n // 8)  # epochs=3 of batches of 8 (train's default)
        assert grower.router.n_subspaces == 3 and grower.trainable_parameters() == 0  # three skills, each frozen after its turn
        assert all(m.n_subspaces == 3 for m in grower.interventions.values())
    finally:  # the session's course model is shared with other tests
        reft.remove()
        cs.remove()
        grower.remove()

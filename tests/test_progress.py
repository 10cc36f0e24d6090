"""Progress lines: seen while a notebook cell runs, gone from the notebook it saves; tqdm in a terminal."""

import pytest

CELL = """
import time
from csreft_lite.progress import Progress
bar = Progress(3, "training")
for step in range(3):
    time.sleep(0.3)  # longer than the redraw interval, so the line is really updated
    bar.update(1, loss="0.123")
print("drawn:", bar._line is not None)
bar.close()
print("done")
"""


@pytest.mark.slow
def test_an_executed_notebook_keeps_no_progress_text(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient", reason="nbclient comes with JupyterLab (make test), not the transformers 4.x venvs")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[0].outputs
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "drawn: True" in text and "done" in text  # the kernel drew a live line
    assert "training" not in text and "steps" not in text  # and blanked it in what was saved
    assert any(o.output_type == "display_data" for o in outputs)  # the line's place, now empty


def test_in_a_terminal_it_is_a_tqdm_bar_that_leaves_nothing_behind(capsys):
    from csreft_lite.progress import Progress

    bar = Progress(2, "training")
    bar.update(1, loss="0.5")
    bar.update(1)
    bar.close()
    assert "training" not in capsys.readouterr().out  # tqdm writes to stderr, and leave=False clears it
    assert Progress(2, "training", enabled=False)._bar is None

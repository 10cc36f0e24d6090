"""The core copies alone: the files README.md lists, put into a package of one's own with an empty ``__init__.py``,
build LoReFT, DiReFT and routed CS-ReFT on a model loaded with plain transformers, train, generate, save and load,
with nothing else of csreft_lite importable or imported."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["interventions", "routing", "hooks", "architecture", "reft_model", "data", "training", "continual", "checkpoint", "compat",
        "validate", "progress"]

pytestmark = pytest.mark.slow

SCRIPT = r'''
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mypkg import data
from mypkg.training import train
from mypkg.interventions import CSReFT, DiReFT, LoReFT
from mypkg.reft_model import ReftModel

torch.set_num_threads(1)
folder, out = sys.argv[1], Path(sys.argv[2])
model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
d = model.config.hidden_size
records = [{"instruction": f"Write the word {w} in capitals.", "output": w.upper()} for w in ["cat", "dog", "sun", "moon"]]
dataset = data.make_dataset(records, tok)
builds = {"loreft": lambda: {2: LoReFT(d, 2)}, "direft": lambda: {2: DiReFT(d, 2)},
          "csreft": lambda: {2: CSReFT(d, 2, 2), 4: CSReFT(d, 2, 2)}}
batch = data.prompt_batch(tok, ["Write the word sun in capitals."])
batch.pop("prompt_lengths")
for name, build in builds.items():
    torch.manual_seed(0)
    reft = ReftModel(model, build(), positions="f3+l3")
    if reft.router is not None:
        reft.init_router(dataset, tok)
    history = train(reft, dataset, tok, max_steps=2, batch_size=2, progress=False)
    assert len(history) == 2, history
    answer = reft.generate(**batch, max_new_tokens=3, do_sample=False)
    reft.save(out / name)
    reft.remove()
    loaded = ReftModel.from_pretrained(model, out / name)
    assert torch.equal(loaded.generate(**batch, max_new_tokens=3, do_sample=False), answer), name
    loaded.remove()
leaked = sorted(m for m in sys.modules if m.startswith("csreft_lite"))
assert not leaked, leaked
print("core copy OK")
'''


def test_the_readme_lists_the_core_files_and_they_import_only_each_other():
    readme = (ROOT / "README.md").read_text()
    for name in CORE:
        assert f"`{name}.py`" in readme, name
        source = (ROOT / "csreft_lite" / f"{name}.py").read_text()
        imported = set(re.findall(r"^\s*from \.(\w+) import", source, re.M)) | set(re.findall(r"^\s*from \. import (\w+)", source, re.M))
        assert imported <= set(CORE), f"{name}.py imports {sorted(imported - set(CORE))}, outside the copy set"
        assert not re.search(r"^\s*(from|import) csreft_lite", source, re.M), f"{name}.py imports the package"


def test_the_core_copied_into_a_package_of_ones_own_trains_generates_saves_and_loads(course_model, tmp_path):
    import csreft_lite as cl

    package = tmp_path / "project" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in CORE:
        (package / f"{name}.py").write_text((ROOT / "csreft_lite" / f"{name}.py").read_text())
    script = tmp_path / "project" / "use_it.py"
    script.write_text(SCRIPT)
    # The interpreter's site-packages may hold an installed csreft_lite: the script checks that nothing imports it.
    env = {"PYTHONPATH": str(tmp_path / "project"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    done = subprocess.run([sys.executable, str(script), str(cl.models.course_model_cache()), str(tmp_path / "ckpts")],
                          cwd=tmp_path / "project", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "core copy OK" in done.stdout


def test_design_s_size_rules_hold_no_function_over_60_lines_and_reft_model_at_most_300():
    """DESIGN.md's house rules for the copy set, measured on the source (docstrings and blank lines included)."""
    import ast

    too_long = []
    for name in CORE:
        for node in ast.walk(ast.parse((ROOT / "csreft_lite" / f"{name}.py").read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
    tree = ast.parse((ROOT / "csreft_lite" / "reft_model.py").read_text())
    reft_model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ReftModel")
    assert reft_model.end_lineno - reft_model.lineno + 1 <= 300

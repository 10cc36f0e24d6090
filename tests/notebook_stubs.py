"""Read a notebook's exercise stubs, to check they stay in step with `solutions/` and `csreft_lite.checks`.

An exercise stub is a top-level ``def`` in a code cell that raises ``NotImplementedError``; the learner
replaces its body. Its signature must equal the reference solution's, and the notebook must run the
checker on it (``name = checks.check_name(name)``), or the exercise and its check drift apart.
"""

from __future__ import annotations

import __future__
import ast
import inspect
import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def code_cells(notebook: str) -> list[str]:
    """The source of every code cell of ``notebooks/<notebook>``."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def stubs(notebook: str) -> dict[str, ast.FunctionDef]:
    """Top-level functions whose body raises ``NotImplementedError``: name -> its AST."""
    found = {}
    for source in code_cells(notebook):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics; exercise cells are plain Python
            continue
        for node in tree.body:
            raises = [s for s in node.body if isinstance(s, ast.Raise)] if isinstance(node, ast.FunctionDef) else []
            if any("NotImplementedError" in ast.unparse(r) for r in raises):
                found[node.name] = node
    return found


def signature_of(stub: ast.FunctionDef, notebook: str) -> inspect.Signature:
    """The stub's signature, compiled as the solutions are (postponed annotations: they compare as text)."""
    header = ast.FunctionDef(**{**stub.__dict__, "body": [ast.Pass()], "decorator_list": []})
    module = ast.fix_missing_locations(ast.Module(body=[header], type_ignores=[]))
    namespace: dict = {}
    exec(compile(module, notebook, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True), {}, namespace)
    return inspect.signature(namespace[stub.name])


def same_signature(stub: inspect.Signature, solution: inspect.Signature) -> bool:
    """Same parameters (names, kinds, defaults); annotations must agree where the stub writes them
    (notebooks 01-02 keep their stubs unannotated for beginners, 03-04 annotate them)."""
    if len(stub.parameters) != len(solution.parameters):
        return False
    for a, b in zip(stub.parameters.values(), solution.parameters.values()):
        if (a.name, a.kind, a.default) != (b.name, b.kind, b.default):
            return False
        if a.annotation is not inspect.Parameter.empty and a.annotation != b.annotation:
            return False
    return stub.return_annotation is inspect.Signature.empty or stub.return_annotation == solution.return_annotation


def assert_stubs_match(notebook: str, module, names: list[str]) -> None:
    """Every exercise in ``names``: a stub in the notebook, with the solution's signature, checked right away."""
    found = stubs(notebook)
    missing = sorted(set(names) - set(found))
    assert not missing, f"{notebook} has no stub `def name(...): raise NotImplementedError` for {missing}"
    source = "\n".join(code_cells(notebook))
    for name in names:
        expected = inspect.signature(getattr(module, name))
        assert same_signature(signature_of(found[name], notebook), expected), (
            f"the stub {name} in {notebook} and solutions/{module.__name__.split('.')[-1]}.py have different signatures"
        )
        assert f"checks.check_{name}({name})" in source, f"{notebook} does not run checks.check_{name} on its stub"

"""The layers import one way: the core (datakit) <- train <- evals, with the CLIs on top.

A core module that imported train (torch, peft) would make every data command pay for them and
tie the data tools to one trainer; evals reaching into train's modules would break whenever the
trainer's insides change. This reads every module's imports (all of them, also those inside
functions) and fails naming the file, line and import that crosses a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULES = {"datakit/cli.py"}  # the command line composes every layer


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def crossings(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name in CLI_MODULES:
            continue
        for line, module in imports(path):
            top = module.split(".")[0]
            if top in forbidden and module not in allowed:
                bad.append(f"{name}:{line}: imports {module}")
    return bad


def test_the_core_imports_neither_train_nor_evals() -> None:
    assert crossings("datakit", ("train", "evals")) == []


def test_train_does_not_import_evals() -> None:
    assert crossings("train", ("evals",)) == []


def test_evals_uses_only_trains_public_interface() -> None:
    assert crossings("evals", ("train",), allowed=("train",)) == []


def test_the_check_sees_a_crossing(tmp_path: Path, monkeypatch) -> None:
    """The test above would pass on an empty tree; this shows it finds an import that crosses."""
    (tmp_path / "datakit").mkdir()
    (tmp_path / "datakit" / "bad.py").write_text("def f():\n    from train.recipe import fit\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert crossings("datakit", ("train", "evals")) == ["datakit/bad.py:2: imports train.recipe"]

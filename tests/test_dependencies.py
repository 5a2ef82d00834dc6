"""What the package imports is what it declares: a fresh virtual environment (CI's) has nothing else.

Importing every module catches a missing module-level import; the AST scan also sees the imports
inside functions (heavy ones kept local: ray, matplotlib, transformers, ...), which an import test
never runs.
"""
import ast
import importlib
import pkgutil
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest

import hubbub

PACKAGE_DIR = Path(hubbub.__file__).parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core requirements, {extra: requirements}) of the installed hubbub, as normalised names."""
    core, extras = set(), {}
    for req in requires("hubbub") or []:
        name = _norm(re.match(r"[A-Za-z0-9._-]+", req).group())
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if extra:
            extras.setdefault(extra.group(1), set()).add(name)
        else:
            core.add(name)
    return core, extras


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module name -> [(file, imported at module level?)] over the package's source."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append((str(path.relative_to(PACKAGE_DIR)), id(node) in top))
    return found


@pytest.mark.parametrize("module", sorted(m.name for m in pkgutil.walk_packages(hubbub.__path__, "hubbub.")))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_every_third_party_import_is_a_declared_requirement():
    core, extras = _declared()
    in_extras = set().union(*extras.values()) if extras else set()
    dists = packages_distributions()
    undeclared, eager_optional = [], []
    for module, places in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module == "hubbub":
            continue
        names = {_norm(d) for d in dists.get(module, [])}
        if names & core:
            continue
        if names & in_extras:
            # an optional dependency: only imported where it is used, so the core imports without it
            eager_optional += [f"{module} ({f})" for f, at_top in places if at_top]
            continue
        undeclared.append(f"{module} (imported in {sorted({f for f, _ in places})}, distributions {sorted(names)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert not eager_optional, f"optional dependencies imported at module level: {eager_optional}"


def test_the_dev_extra_pulls_every_extra_the_code_imports():
    """`pip install -e .[dev]` (the set-up) must give the tests every optional feature the code
    imports; the cloud-storage extras (gcs, azure) are fsspec backends hubbub never imports."""
    _, extras = _declared()
    dists = packages_distributions()
    imported = {_norm(d) for module in _imports() for d in dists.get(module, [])}
    dev_reqs = [r for r in requires("hubbub") if re.search(r"""extra\s*==\s*["']dev["']""", r)]
    for extra, names in extras.items():
        if extra != "dev" and names & imported:
            assert any(re.match(rf"hubbub\[.*\b{extra}\b.*\]", r) for r in dev_reqs), extra


def test_tensorboard_logging_is_installed():
    """The Solver logs with Accelerate's TensorBoard tracker, which silently logs nothing without it."""
    from accelerate.utils import is_tensorboard_available

    assert is_tensorboard_available()

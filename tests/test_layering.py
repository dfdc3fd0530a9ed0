"""The package's layers, held: each subpackage imports only what lies below it, at the top of a module or
inside a function (a lazy import crosses a layer all the same). Read from the source with `ast`, so a
failure names the file, the line and the import that crossed."""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "colordim"

# What each layer may not import: colordim's own subpackages, then other libraries (top-level names).
FORBIDDEN = {
    "data": ({"engine", "health", "views", "probes", "integrations", "demos", "cli"},
             {"torch", "numba", "triton", "matplotlib", "fastai", "fastcore"}),
    "engine": ({"health", "views", "probes", "integrations", "demos", "cli"},
               {"matplotlib", "fastai", "fastcore", "lightning", "transformers", "wandb", "tensorboard"}),
    "health": ({"engine", "views", "probes", "integrations", "demos", "cli"},
               {"torch", "numba", "triton", "matplotlib", "fastai", "fastcore"}),
    "views": ({"engine", "probes", "integrations", "demos", "cli"},
              {"torch", "numba", "triton", "fastai", "fastcore"}),
    "probes": ({"integrations", "demos", "cli"}, {"fastai", "fastcore"}),
    "integrations": ({"demos", "cli"}, set()),
}

# The one import that points up, on purpose: `Recording.to_html(path)`, the public convenience, draws its
# page on demand (matplotlib loads then); nothing else in `data/` knows of a view.
ALLOWED = {("colordim/data/recording.py", "colordim.views.html_page")}


def imports(path: Path):
    "(line, absolute module name) of every import in the file, relative ones resolved."
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module:
                yield node.lineno, module
            else:  # `from . import plot`: the module colordim.views.plot
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"


def crossings(layer: str) -> list[str]:
    own, others = FORBIDDEN[layer]
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in imports(path):
            names = module.split(".")
            if (str(path.relative_to(PACKAGE.parent)), module) in ALLOWED:
                continue
            if names[0] == "colordim" and len(names) > 1 and names[1] in own:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({layer} may not import {names[1]})")
            elif names[0] in others:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({layer} may not import {names[0]})")
    return found


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_each_layer_imports_only_what_lies_below_it(layer):
    assert (PACKAGE / layer / "__init__.py").exists()
    crossed = crossings(layer)
    assert not crossed, "\n".join(crossed)


def test_every_module_lives_in_a_layer():
    """At the top only the public names (`colordim`, and the trainers' callbacks `colordim.lightning` and
    `colordim.hf`, which only re-export them from `integrations/`) and the command line: a new module goes
    where its layer is."""
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == ["__init__.py", "cli.py", "hf.py", "lightning.py"]
    for entry in ("hf.py", "lightning.py"):  # one import, from their integration
        assert [module for _, module in imports(PACKAGE / entry)] == [f"colordim.integrations.{entry[:-3]}"]
    assert sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__") == \
        sorted([*FORBIDDEN, "demos"])


def test_a_crossing_import_is_named(tmp_path, monkeypatch):
    "The check itself: a views module that imports the engine is reported with its file, line and import."
    views = tmp_path / "colordim" / "views"
    views.mkdir(parents=True)
    (views / "__init__.py").write_text("")
    (views / "bad.py").write_text("import numpy\n\ndef f():\n    from ..engine.plans import make_plan\n    import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "colordim")
    assert crossings("views") == [
        "colordim/views/bad.py:4 imports colordim.engine.plans (views may not import engine)",
        "colordim/views/bad.py:5 imports torch (views may not import torch)"]


def test_no_module_sets_attributes_on_a_class_it_imported():
    """A reader of a class sees all its methods in its own module: no `Recording.save = ...` from elsewhere,
    no `Learner.fit = ...` for the whole process (fastai's `@patch` for `learn.color_dim` & co. is a decorated
    function, fastai's idiom, and is not an assignment)."""
    crossed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        imported = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in [t for group in targets for t in (group.elts if isinstance(group, ast.Tuple) else [group])]:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id in imported and target.value.id[:1].isupper():
                    crossed.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} sets {target.value.id}.{target.attr}")
    assert not crossed, "\n".join(crossed)

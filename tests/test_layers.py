"""Import layers and the trainer's editing interface, checked on the source (AST, no import).

Every ``.py`` file of the installed folders is mapped to its module name as pyproject's
``package-dir`` maps folders (``recon/`` = ``sceneforge.recon``, ...). Each ``import``,
``from ... import`` (relative ones included, also inside functions) and
``importlib.import_module("...")`` with a literal name is resolved to a module and checked
against :data:`LAYERS`. Editing modules never import each other: ``inpaint`` and ``stylize``
not one another, and no sub-package ``stylize/<name>/`` a sibling sub-package.

Editor modules (:data:`EDITOR_GLOBS`) reach a trainer only through the attributes named in
``Trainer.EDITING_INTERFACE``.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package (as pyproject's ``packages`` names it) -> (its layer, layers it must not import).
#: A module belongs to the longest package here that is a prefix of its name. One line per
#: package; a package in pyproject without a line fails ``test_every_package_has_a_rule``.
LAYERS: dict[str, tuple[str, frozenset[str]]] = {
    "sceneforge.core": ("core", frozenset({"recon", "fields", "inpaint", "stylize", "app"})),
    "sceneforge.recon": ("recon", frozenset({"fields", "inpaint", "stylize", "app"})),
    "sceneforge.recon.ba": ("recon", frozenset({"fields", "inpaint", "stylize", "app"})),
    "sceneforge.fields": ("fields", frozenset({"recon", "inpaint", "stylize", "app"})),
    "sceneforge.inpaint": ("inpaint", frozenset({"stylize", "app"})),
    "sceneforge.stylize": ("stylize", frozenset({"inpaint", "app"})),
    "sceneforge.stylize.free3d": ("stylize", frozenset({"inpaint", "app"})),
    "sceneforge.stylize.human": ("stylize", frozenset({"inpaint", "app"})),
    "sceneforge.stylize.human.style": ("stylize", frozenset({"inpaint", "app"})),
    "sceneforge.stylize.hyperdreamer": ("stylize", frozenset({"inpaint", "app"})),
    # the app layer: CLI, pipeline, demo, viewer, nerfstudio plugins; may import every layer
    "sceneforge": ("app", frozenset()),
    "sceneforge.nerfstudio": ("app", frozenset()),
    "sceneforge.viewer": ("app", frozenset()),
}
#: Packages whose sub-packages (``<folder>/<name>/``) are editing modules that must not
#: import a sibling sub-package.
SIBLING_ISOLATED = ("sceneforge.stylize",)

#: Modules that edit a trained scene through a trainer (glob patterns from the repo root).
EDITOR_GLOBS = (
    "inpaint/*.py",
    "stylize/**/*.py",
    "sceneforge/viewer/**/*.py",
    "sceneforge/nerfstudio/complete.py",
    "fields/api.py",
)
#: Variable names that hold a trainer in editor modules (plus ``self.trainer``).
TRAINER_NAMES = frozenset({"trainer", "tr", "run_trainer"})


# ----------------------------------------------------------------------------- pyproject


def _pyproject() -> tuple[dict[str, str], list[str]]:
    """``package-dir`` and ``packages`` of ``[tool.setuptools]``."""
    text = (REPO / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the two one-line entries, parsed by hand
        dirs = dict(re.findall(r'"([\w.]+)"\s*=\s*"([\w./]+)"', _line(text, "package-dir")))
        return dirs, re.findall(r'"([\w.]+)"', _line(text, "packages"))
    st = tomllib.loads(text)["tool"]["setuptools"]
    return dict(st["package-dir"]), list(st["packages"])


def _line(text: str, key: str) -> str:
    m = re.search(rf"^{re.escape(key)}\s*=\s*(.*)$", text, re.M)
    assert m, f"pyproject.toml: no {key} line under [tool.setuptools]"
    return m.group(1)


PACKAGE_DIRS, PACKAGES = _pyproject()


def module_name(path: Path) -> tuple[str, bool]:
    """Module name of a source file (and whether it is a package ``__init__``), mapping
    folders as pyproject's ``package-dir`` does (the longest matching folder wins)."""
    rel = path.resolve().relative_to(REPO)
    best = None
    for pkg, folder in PACKAGE_DIRS.items():
        parts = Path(folder).parts
        if rel.parts[: len(parts)] == parts and (best is None or len(parts) > len(best[1])):
            best = (pkg, parts)
    assert best is not None, f"{rel}: not inside a package-dir folder"
    pkg, parts = best
    rest = list(rel.parts[len(parts) :])
    is_pkg = rest[-1] == "__init__.py"
    rest = rest[:-1] if is_pkg else [*rest[:-1], rest[-1][: -len(".py")]]
    return ".".join([pkg, *rest]), is_pkg


def source_files() -> list[Path]:
    folders = sorted(set(PACKAGE_DIRS.values()))
    files = {p for f in folders for p in (REPO / f).rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(files)


# ----------------------------------------------------------------------------- import checker


def owner(module: str) -> str | None:
    """The :data:`LAYERS` package a module belongs to (longest prefix), None outside."""
    best = None
    for pkg in LAYERS:
        if (module == pkg or module.startswith(pkg + ".")) and (
            best is None or len(pkg) > len(best)
        ):
            best = pkg
    return best


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}: {self.rule}"


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``tree`` (anywhere in the file).

    ``from X import a, b`` yields ``X.a`` and ``X.b`` (a name may be a sub-module; a plain
    attribute still belongs to ``X``'s package). Relative imports are resolved against the
    module's package; ``importlib.import_module("...")`` / ``__import__("...")`` with a
    literal absolute name count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    out.append((node.lineno, f"<relative import beyond {package}>"))
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            out += [
                (node.lineno, f"{base}.{a.name}" if a.name != "*" else base) for a in node.names
            ]
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and not arg.value.startswith(".")
            ):
                out.append((node.lineno, arg.value))
    return out


def check_source(
    source: str,
    module: str,
    is_package: bool = False,
    file: str = "<string>",
    subpackages: dict[str, set[str]] | None = None,
) -> list[Violation]:
    """Layer violations of one module's source. ``subpackages`` maps each
    :data:`SIBLING_ISOLATED` package to the names of its sub-packages."""
    subpackages = subpackages or {}
    src_pkg = owner(module)
    assert src_pkg is not None, f"{file}: {module} belongs to no package of LAYERS"
    src_layer, forbidden = LAYERS[src_pkg]
    found = []
    for line, target in imported_modules(ast.parse(source, file), module, is_package):
        if target.startswith("<"):
            found.append(Violation(file, line, module, target, "unresolvable relative import"))
            continue
        if target != "sceneforge" and not target.startswith("sceneforge."):
            continue  # third-party or standard library
        dst_pkg = owner(target)
        dst_layer = LAYERS[dst_pkg][0] if dst_pkg else "app"
        if dst_layer in forbidden:
            rule = f"{src_pkg} ({src_layer}) must not import the {dst_layer} layer"
            found.append(Violation(file, line, module, target, rule))
            continue
        for iso in SIBLING_ISOLATED:
            a, b = _sub(module, iso, subpackages), _sub(target, iso, subpackages)
            if a and b and a != b:
                rule = f"{iso}.{a} must not import its sibling sub-package {iso}.{b}"
                found.append(Violation(file, line, module, target, rule))
    return found


def _sub(module: str, package: str, subpackages: dict[str, set[str]]) -> str | None:
    """The sub-package of ``package`` that ``module`` lies in, if any."""
    if not module.startswith(package + "."):
        return None
    name = module[len(package) + 1 :].split(".")[0]
    return name if name in subpackages.get(package, set()) else None


def tree_subpackages() -> dict[str, set[str]]:
    out = {}
    for pkg in SIBLING_ISOLATED:
        folder = REPO / PACKAGE_DIRS.get(pkg, pkg.replace(".", "/"))
        out[pkg] = {d.name for d in folder.iterdir() if d.is_dir() and any(d.rglob("*.py"))}
    return out


# ----------------------------------------------------------------------------- layer tests


def test_every_package_has_a_rule():
    missing = [p for p in PACKAGES if p not in LAYERS]
    stale = [p for p in LAYERS if p not in PACKAGES]
    assert not missing, f"packages in pyproject.toml without a row in LAYERS: {missing}"
    assert not stale, f"rows of LAYERS for packages pyproject.toml does not list: {stale}"
    assert all(p in LAYERS for p in PACKAGE_DIRS), "a package-dir entry has no row in LAYERS"


def test_every_source_file_belongs_to_a_package():
    files = source_files()
    assert len(files) > 50
    for f in files:
        name, _ = module_name(f)
        assert owner(name) is not None, f"{f.relative_to(REPO)} ({name}) belongs to no package"


def test_no_module_breaks_the_layers():
    subs = tree_subpackages()
    found = []
    for f in source_files():
        name, is_pkg = module_name(f)
        rel = str(f.relative_to(REPO))
        found += check_source(f.read_text(), name, is_pkg, rel, subs)
    assert not found, "layer violations:\n" + "\n".join(map(str, found))


def test_module_names_follow_package_dir():
    assert module_name(REPO / "recon" / "sfm.py") == ("sceneforge.recon.sfm", False)
    assert module_name(REPO / "fields" / "__init__.py") == ("sceneforge.fields", True)
    assert module_name(REPO / "sceneforge" / "core" / "io.py") == ("sceneforge.core.io", False)
    assert module_name(REPO / "sceneforge" / "cli.py") == ("sceneforge.cli", False)


BROKEN = [
    # (importer, is package, source, the rule's words)
    ("sceneforge.core.io", False, "from sceneforge.fields.trainer import Trainer", "fields layer"),
    ("sceneforge.core.io", False, "import sceneforge.pipeline as p", "app layer"),
    ("sceneforge.core.io", False, "from sceneforge import commands", "app layer"),
    ("sceneforge.core", True, "from .. import cli", "app layer"),
    ("sceneforge.recon.sfm", False, "def f():\n    from ..fields import trainer", "fields layer"),
    ("sceneforge.recon.sfm", False, "import importlib\nimportlib.import_module('sceneforge.inpaint')", "inpaint layer"),
    ("sceneforge.fields.api", False, "from sceneforge.recon.reconstruct import reconstruct", "recon layer"),
    ("sceneforge.fields.api", False, "from sceneforge.viewer.app import view", "app layer"),
    ("sceneforge.inpaint.complete", False, "from sceneforge.stylize import x", "stylize layer"),
    ("sceneforge.inpaint.complete", False, "from ..pipeline import run", "app layer"),
    ("sceneforge.stylize.a.model", False, "from sceneforge.inpaint.masks import dilate", "inpaint layer"),
    ("sceneforge.stylize.a.model", False, "class C:\n    def m(self):\n        from ..b import core", "sibling sub-package sceneforge.stylize.b"),
    ("sceneforge.stylize.a", True, "from sceneforge.stylize.b.util import f", "sibling sub-package"),
    ("sceneforge.recon", True, "from ...x import y", "unresolvable relative import"),
]  # fmt: skip


@pytest.mark.parametrize("module,is_pkg,source,rule", BROKEN)
def test_the_checker_catches_broken_rules(module, is_pkg, source, rule):
    found = check_source(source, module, is_pkg, "synthetic.py", {"sceneforge.stylize": {"a", "b"}})
    assert len(found) == 1 and rule in found[0].rule, found
    assert str(found[0]).startswith(f"synthetic.py:{source.count(chr(10)) + 1}: ")


ALLOWED = [
    ("sceneforge.fields.trainer", False, "from sceneforge.core.devices import resolve_device"),
    ("sceneforge.recon.sfm", False, "from .bal import read_bal\nfrom . import tracks"),
    ("sceneforge.inpaint.complete", False, "from sceneforge.fields.trainer import Trainer\nfrom sceneforge.recon import sfm"),
    ("sceneforge.stylize.a.model", False, "from ..a import util\nfrom sceneforge.stylize import common"),
    ("sceneforge.pipeline", False, "from sceneforge.inpaint.complete import complete\nimport torch"),
    ("sceneforge.core.io", False, "import numpy\nfrom .scene import SceneData"),
]  # fmt: skip


@pytest.mark.parametrize("module,is_pkg,source", ALLOWED)
def test_the_checker_allows_what_the_layers_allow(module, is_pkg, source):
    assert check_source(source, module, is_pkg, "ok.py", {"sceneforge.stylize": {"a", "b"}}) == []


# ----------------------------------------------------------------------------- editing interface


def editor_files() -> list[Path]:
    return sorted({p for g in EDITOR_GLOBS for p in REPO.glob(g) if "__pycache__" not in p.parts})


def trainer_attribute_uses(source: str) -> list[tuple[int, str, str]]:
    """``(line, holder, attribute)`` of every ``trainer.x`` / ``tr.x`` / ``run_trainer.x`` /
    ``self.trainer.x`` in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if isinstance(v, ast.Name) and v.id in TRAINER_NAMES:
            out.append((node.lineno, v.id, node.attr))
        elif (
            isinstance(v, ast.Attribute)
            and v.attr == "trainer"
            and isinstance(v.value, ast.Name)
            and v.value.id == "self"
        ):
            out.append((node.lineno, "self.trainer", node.attr))
    return sorted(out)


def interface_violations(source: str, interface: tuple[str, ...], file: str) -> list[str]:
    return [
        f"{file}:{line}: {holder}.{attr} is not in Trainer.EDITING_INTERFACE"
        for line, holder, attr in trainer_attribute_uses(source)
        if attr not in interface
    ]


def editing_interface() -> tuple[str, ...]:
    from sceneforge.fields.trainer import Trainer

    interface = getattr(Trainer, "EDITING_INTERFACE", None)
    if interface is None:
        pytest.skip("Trainer.EDITING_INTERFACE not defined yet")
    missing = [a for a in interface if not hasattr(Trainer, a) and a not in _instance_attrs()]
    assert not missing, f"EDITING_INTERFACE names attributes Trainer does not have: {missing}"
    return tuple(interface)


def _instance_attrs() -> set[str]:
    """Attributes ``Trainer.__init__`` assigns on ``self`` (read from the source)."""
    import inspect

    from sceneforge.fields.trainer import Trainer

    tree = ast.parse(inspect.getsource(Trainer))
    return {
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for t in (t.elts if isinstance(t, ast.Tuple) else [t])
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }


def test_editors_use_only_the_editing_interface():
    interface = editing_interface()
    files = editor_files()
    assert any(f.parts[-2:] == ("fields", "api.py") for f in files)
    found = []
    for f in files:
        found += interface_violations(f.read_text(), interface, str(f.relative_to(REPO)))
    assert not found, "trainer attributes outside Trainer.EDITING_INTERFACE:\n" + "\n".join(found)


def test_the_interface_scan_catches_other_attributes():
    snippet = (
        "def f(trainer, tr, run_trainer):\n"
        "    trainer.step\n"
        "    trainer.dataset.update_images([0], [x])\n"
        "    tr.field.eval()\n"
        "    run_trainer.cfg.downscale = 2\n"
        "    other.dataset\n"
        "class E:\n"
        "    def g(self):\n"
        "        self.trainer.render_view(0)\n"
        "        self.trainer.optimizer.step()\n"
    )
    found = interface_violations(snippet, ("step", "render_view"), "editor.py")
    assert found == [
        "editor.py:3: trainer.dataset is not in Trainer.EDITING_INTERFACE",
        "editor.py:4: tr.field is not in Trainer.EDITING_INTERFACE",
        "editor.py:5: run_trainer.cfg is not in Trainer.EDITING_INTERFACE",
        "editor.py:10: self.trainer.optimizer is not in Trainer.EDITING_INTERFACE",
    ]


if __name__ == "__main__":  # list the violations without pytest
    for f in source_files():
        n, p = module_name(f)
        for v in check_source(f.read_text(), n, p, str(f.relative_to(REPO)), tree_subpackages()):
            print(v)
    sys.exit(0)

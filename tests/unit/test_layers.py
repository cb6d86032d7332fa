"""The layers of docs/architecture.md, enforced: imports only point downward, and each package's public surface is
pinned.

Every ``import`` statement of every module is read with :mod:`ast` (so imports inside functions and under
``if TYPE_CHECKING:`` count as much as those at the top) and resolved to the package it names. A module may import
from its own package, from a lower layer, and from the top-level modules every layer shares (``errors``,
``clock``, ``home_dir``, ``mounts``: these import only each other and the standard library). Packages
of one rank (``store`` and ``protocol``) do not import each other. Across packages only public names are imported
(no ``_name`` module or attribute): what one package reaches of another is what it may rely on.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anysyncfs

PACKAGE_ROOT = Path(anysyncfs.__file__).parent

# Rank of each package: a module imports only from its own package or a package of lower rank.
RANKS: dict[str, int] = {
    "core": 0,
    "store": 1,
    "protocol": 1,
    "replica": 2,
    "net": 3,
    "fs": 4,  # the mount runs the sync engine (fs/mount_sync.py): fs sits above net
    "cli": 5,
}
SHARED = {"errors", "clock", "home_dir", "mounts"}  # top-level modules below every package
ENTRY_POINTS = {"__main__": "cli"}  # top-level modules above a package (python -m anysyncfs)
# The one compiled extension is built for core (core/bao.py is its only importer).
PRIVATE_ALLOWED = {("core", "_bao_native")}

# What each package's __init__ exports (its ``__all__``); the rest is reached through its modules. A change here is
# a change of the public surface: update this table in the same commit, on purpose.
SURFACE: dict[str, list[str]] = {
    "core": [],
    "store": [],
    "protocol": [
        "Closed", "ErrorCode", "ErrorReceived", "Established", "Event", "FrameDecoder", "FrameType",
        "NotifyReceived", "RequestReceived", "ResponseReceived", "Role", "Session", "encode_frame",
    ],
    "replica": [
        "Home", "IngestResult", "Ledger", "QuotaExceeded", "Replica", "SpaceData", "Unlocked", "Usage",
        "adopt_space", "create_space", "fsck", "open_replica", "resolve_space",
    ],
    "net": [],
    "fs": ["Attr", "Ctx", "ROOT_INODE", "SetAttrRequest", "StatFs", "Vfs"],
    "cli": [],
}  # fmt: skip


@dataclass(frozen=True)
class Violation:
    where: str  # path:line
    importer: str  # package (or top-level module) of the importing module
    imported: str  # dotted module the statement names
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported} ({self.why})"


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """Dotted name of ``path`` under ``root`` (``anysyncfs.fs.vfs``) and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute dotted names a statement imports (``from a import b`` gives ``a.b``: b may be a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{alias.name}" for alias in node.names]


def _layer(parts: list[str]) -> str:
    """The package (``fs``) or top-level module (``errors``) a dotted name below ``anysyncfs`` belongs to."""
    return parts[1] if len(parts) > 1 else ""


def layer_violations(root: Path) -> list[Violation]:
    """Every import in the package at ``root`` that breaks the layering."""
    top = root.name
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        if not (path.parent / "__init__.py").exists():
            continue  # not importable: a build script (native/build_bao.py runs at install, under cffi)
        module, is_package = _module_name(root, path)
        mparts = module.split(".")
        if len(mparts) == 1 or (len(mparts) == 2 and not is_package):  # a top-level module
            own = ENTRY_POINTS.get(mparts[-1])
            if own is None:
                continue  # errors.py and the like import nothing of the packages (checked below via SHARED)
            rank, importer = RANKS[own] + 0.5, mparts[1]
        else:
            importer = mparts[1]
            if importer not in RANKS:
                found.append(Violation(str(path), importer, module, "a package the layer table does not know"))
                continue
            rank = RANKS[importer]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            for name in _imported(module, is_package, node):
                parts = name.split(".")
                if parts[0] != top or len(parts) < 2:
                    continue
                target = _layer(parts)
                if target == importer:
                    continue
                private = [p for p in parts[1:] if p.startswith("_") and not p.startswith("__")]
                if private and (importer, parts[1]) not in PRIVATE_ALLOWED:
                    found.append(Violation(where, importer, name, f"{private[0]} is private to its package"))
                if target in SHARED:
                    continue
                if target not in RANKS:
                    if (importer, target) not in PRIVATE_ALLOWED:
                        found.append(Violation(where, importer, name, "not a package of the layer table"))
                    continue
                if RANKS[target] >= rank:
                    found.append(Violation(where, importer, name, "upward" if RANKS[target] > rank else "sideways"))
    for name in SHARED:  # the shared modules stay below every package
        path = root / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in _imported(f"{top}.{name}", False, node):
                    if imported.split(".")[0] == top and _layer(imported.split(".")) not in SHARED:
                        found.append(Violation(f"{path.name}:{node.lineno}", name, imported, "shared module"))
    return found


def test_imports_only_point_down() -> None:
    assert [str(v) for v in layer_violations(PACKAGE_ROOT)] == []


def _copy_tree(tmp_path: Path) -> Path:
    copy = tmp_path / "anysyncfs"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("*.so", "*.o", "*.c", "*.h", "__pycache__"))
    return copy


def test_planted_upward_imports_are_found(tmp_path: Path) -> None:
    """The checker on a copy of the package with upward imports planted where a top-level scan would miss them."""
    copy = _copy_tree(tmp_path)
    assert layer_violations(copy) == []
    with (copy / "core" / "ids.py").open("a") as f:  # lazy, inside a function
        f.write("\n\ndef _planted() -> None:\n    from ..fs import mount  # noqa\n")
    with (copy / "store" / "files.py").open("a") as f:  # typing only
        f.write("\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from anysyncfs.replica.replica import Replica\n")
    with (copy / "store" / "dialect.py").open("a") as f:  # sideways: store and protocol share a rank
        f.write("\nimport anysyncfs.protocol.frames\n")
    with (copy / "cli" / "commands.py").open("a") as f:  # downward, but to a private module
        f.write("\nfrom ..net.sync import _planted_private\n")
    found = {(v.importer, v.imported, v.why) for v in layer_violations(copy)}
    assert found == {
        ("core", "anysyncfs.fs.mount", "upward"),
        ("store", "anysyncfs.replica.replica.Replica", "upward"),
        ("store", "anysyncfs.protocol.frames", "sideways"),
        ("cli", "anysyncfs.net.sync._planted_private", "_planted_private is private to its package"),
    }


def test_a_new_package_must_be_placed(tmp_path: Path) -> None:
    copy = _copy_tree(tmp_path)
    (copy / "plugins").mkdir()
    (copy / "plugins" / "__init__.py").write_text("")
    assert [v.why for v in layer_violations(copy)] == ["a package the layer table does not know"]


def test_public_surface_is_pinned() -> None:
    """Each package's ``__all__`` is the table above, every name in it resolves, every public name its ``__init__``
    binds is listed, and nothing it exports comes from another package."""
    assert sorted(RANKS) == sorted(p.parent.name for p in PACKAGE_ROOT.glob("*/__init__.py"))
    for package, expected in SURFACE.items():
        mod = importlib.import_module(f"anysyncfs.{package}")
        exported = sorted(getattr(mod, "__all__", []))
        assert exported == sorted(expected), f"anysyncfs.{package}.__all__ changed: update SURFACE on purpose"
        for name in exported:
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                home = obj.__module__
                assert home.startswith(f"anysyncfs.{package}"), f"{package}.{name} comes from {home}"
        tree = ast.parse((PACKAGE_ROOT / package / "__init__.py").read_text())
        bound = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        } | {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name) and t.id != "__all__"}
        public = {name for name in bound if not name.startswith("_")}
        assert public <= set(exported), f"anysyncfs.{package} binds {sorted(public - set(exported))} outside __all__"


def test_importing_fs_does_not_import_pyfuse3() -> None:
    """fs/__init__ promises the Vfs without pyfuse3 (tools that only read a space need no FUSE library)."""
    code = "import sys, anysyncfs.fs, anysyncfs.fs.errnos; sys.exit('pyfuse3' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT.parent).returncode == 0


def test_nothing_imports_the_composition_root() -> None:
    """cli/main.py imports every command module; none imports it back (the context lives in cli/context.py)."""
    back = []
    for path in sorted((PACKAGE_ROOT / "cli").glob("*.py")):
        module, is_package = _module_name(PACKAGE_ROOT, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and path.name != "main.py":
                back += [f"{path.name}:{node.lineno}" for name in _imported(module, is_package, node)
                         if name == "anysyncfs.cli.main" or name.startswith("anysyncfs.cli.main.")]
    assert back == []

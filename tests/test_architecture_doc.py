"""docs/ARCHITECTURE.md stays true: it names every package and module of libs/raychat and services/raychat,
and every `raychat.*` import points to a lower floor of its floor table."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
PACKAGES = [ROOT / "libs" / "raychat", ROOT / "services" / "raychat"]


def _rooms() -> dict[str, Path]:
    """'model/' -> its directory, 'common.py' -> its file: the top-level rooms of both trees."""
    rooms = {}
    for top in PACKAGES:
        for p in top.iterdir():
            if p.is_dir() and any(p.glob("*.py")):
                rooms[p.name + "/"] = p
            elif p.suffix == ".py" and p.name != "__init__.py":
                rooms[p.name] = p
    return rooms


def _floors() -> dict[str, int]:
    return {name: int(n) for n, names in re.findall(r"^floor (\d+)\s+(.+)$", DOC, flags=re.M)
            for name in names.split()}


def test_every_module_of_every_package_is_named():
    modules = [p for top in PACKAGES for p in top.rglob("*.py") if p.name != "__init__.py" and p.parent != top]
    assert len(modules) > 40
    unnamed = [str(p.relative_to(p.parents[1])) for p in modules if f"`{p.name}`" not in DOC]
    assert not unnamed, f"docs/ARCHITECTURE.md does not name the modules {unnamed}"


def test_every_package_and_top_module_has_a_floor_and_imports_only_lower_floors():
    rooms, floors = _rooms(), _floors()
    assert set(floors) == set(rooms), (set(rooms) - set(floors), set(floors) - set(rooms))
    by_module = {name.removesuffix("/").removesuffix(".py"): name for name in rooms}
    upward = []
    for name, path in rooms.items():
        files = [path] if path.is_file() else list(path.rglob("*.py"))
        for f in files:
            for node in ast.walk(ast.parse(f.read_text())):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                for mod in mods:
                    parts = mod.split(".")
                    if parts[0] != "raychat" or len(parts) < 2 or by_module.get(parts[1], name) == name:
                        continue
                    target = by_module[parts[1]]
                    if floors[target] >= floors[name]:
                        upward.append(f"{f.relative_to(ROOT)} (floor {floors[name]}) imports {mod} "
                                      f"(floor {floors[target]})")
    assert not upward, "\n".join(upward)

"""libs/ is pure PyTorch: it must never import Ray, web frameworks, pydantic or prometheus_client."""

import ast
from pathlib import Path

FORBIDDEN = {"ray", "fastapi", "starlette", "pydantic", "prometheus_client", "uvicorn"}
LIBS = Path(__file__).resolve().parents[1] / "libs"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_libs_never_import_services_frameworks():
    files = list(LIBS.rglob("*.py"))
    assert len(files) > 5
    bad = [f"{f.relative_to(LIBS)}:{line} imports {mod}" for f in files for mod, line in _imports(f)
           if mod in FORBIDDEN]
    assert not bad, "\n".join(bad)


def test_libs_do_not_reach_into_services():
    services = {p.name for p in (LIBS.parent / "services" / "raychat").iterdir() if p.is_dir() or p.suffix == ".py"}
    services = {s.removesuffix(".py") for s in services} - {"__pycache__"}
    bad = []
    for f in LIBS.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raychat."):
                if node.module.split(".")[1] in services:
                    bad.append(f"{f.relative_to(LIBS)} imports {node.module}")
    assert not bad, "\n".join(bad)

"""The host package's layering (docs/design.md, "How the code is laid out"): CLI → run pipeline →
engines → image/payload → chip contract/errors. No module imports one above it, and every module
imports on its own."""
import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "microgpt"
# Bottom to top; a module may import from its own layer or those below.
LAYERS = [
    ("chip contract/errors", ["chip", "errors", "fileio"]),
    ("image/payload", ["payload", "image", "basefw", "mpy", "dataset", "download", "qemu_install", "reference", "scalar", "natmod", "planner"]),
    ("engines", ["engines", "rawrepl", "board", "ports", "flash"]),
    ("run pipeline", ["run", "uart", "report", "chip_speed"]),
    ("cli", ["cli"]),
]
LEVEL = {name: level for level, (_, names) in enumerate(LAYERS) for name in names}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "host_boot.py":  # MicroPython's, not the host's: the VM runs it to boot
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def level(module: str) -> int | None:
    parts = module.split(".")
    return LEVEL.get(parts[1]) if parts[0] == "microgpt" and len(parts) > 1 else None


def imports(path, module):
    """The microgpt modules `path` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield from ([f"{base}.{alias.name}" for alias in node.names] if not node.module else [base])


def test_every_host_module_has_a_layer():
    assert [module for _, module in modules() if module != "microgpt" and level(module) is None] == []


def test_the_design_notes_layer_table_is_this_one():
    # docs/design.md's table names each layer's modules in backticks (`run.py`, `engines/`, `microgpt/cli/`).
    rows = {}
    for line in (ROOT / "docs" / "design.md").read_text().split("## How the code is laid out")[1].splitlines():
        cells = line.split("|")
        if len(cells) == 4 and cells[1].strip() not in ("layer", "---"):
            names = (name.removeprefix("microgpt/").removesuffix("/").removesuffix(".py")
                     for name in re.findall(r"`([^`]+)`", cells[2]))
            rows[cells[1].strip().lower()] = sorted(name for name in names if name.split(".")[0] in LEVEL)
    assert rows == {layer: sorted(names) for layer, names in LAYERS}


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path, module in modules():
        for imported in imports(path, module):
            if level(module) is not None and level(imported) is not None and level(imported) > level(module):
                upward.append(f"{module} ({LAYERS[level(module)][0]}) imports {imported} "
                              f"({LAYERS[level(imported)][0]})")
    assert upward == []


@pytest.mark.parametrize("module", [module for _, module in modules()])
def test_each_module_imports_on_its_own(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_config_json_is_written_in_one_place_and_read_by_no_host_code():
    # The options decide what goes on the chip once (payload.build); the chip alone reads its config
    # (board.py only names it to the board's sampler, firmware/infer.py, which reads it there).
    uses = [str(path.relative_to(ROOT)) for path, _ in modules() if "chip.CONFIG" in path.read_text()
            or '"config.json"' in path.read_text()]
    assert uses == ["microgpt/board.py", "microgpt/payload.py"]
    assert "read" not in next(line for line in (ROOT / "microgpt/board.py").read_text().splitlines()
                              if "chip.CONFIG" in line)

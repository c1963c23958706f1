"""Layers point one way: the codec, container, vector I/O, model store, collections and
``spreadcode info`` import neither torch nor click, and nothing in the library imports the CLI."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

from spreadcode import container

PACKAGE = Path(__file__).resolve().parents[1] / "spreadcode"
LIGHT_MODULES = ("errors", "_codec", "lattice", "signs", "quantizer", "fileio", "vecio",
                 "container", "store", "collection", "collection_dir")


def test_light_modules_and_info_import_neither_torch_nor_click(tmp_path):
    spc = tmp_path / "db.spc"
    with container.SpcWriter(spc, kind="sign", d=16, param=16, bits=16, code_bytes=2,
                             input_dim=16, input_dtype="float32") as writer:
        writer.append(np.zeros((3, 2), dtype=np.uint8))
    script = "\n".join([
        "import sys",
        *(f"import spreadcode.{name}" for name in LIGHT_MODULES),
        "from spreadcode.commands import info_command",
        f"report = info_command({str(spc)!r}, store_path={str(tmp_path / 'store')!r})",
        "assert dict(report.rows)",
        "print(sorted(m for m in ('torch', 'click') if m in sys.modules))",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_nothing_in_the_library_imports_the_cli():
    for path in PACKAGE.glob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name.split(".")[-1] in ("cli", "click") for name in names), path.name

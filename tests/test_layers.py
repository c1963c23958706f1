"""Layers point one way: the codec, container, vector I/O, model store, collections and
``spreadcode info`` (of a .spc file or a collection directory) import neither torch nor click
(nor dask or pyarrow, which only Dask runs and Parquet inputs import), and nothing in the
library imports the CLI."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

from spreadcode import collection_dir, container
from spreadcode.quantizer import QuantizerSpec

PACKAGE = Path(__file__).resolve().parents[1] / "spreadcode"
LIGHT_MODULES = ("errors", "_codec", "lattice", "signs", "quantizer", "fileio", "vecio",
                 "parquet", "container", "store", "collection", "collection_dir", "distributed",
                 "malloc")
HEAVY = ("torch", "click", "dask", "distributed", "pyarrow")


def test_light_modules_and_info_import_neither_torch_nor_click_nor_dask(tmp_path):
    spc = tmp_path / "db.spc"
    with container.SpcWriter(spc, kind="sign", d=16, param=16, bits=16, code_bytes=2,
                             input_dim=16, input_dtype="float32") as writer:
        writer.append(np.zeros((3, 2), dtype=np.uint8))
    collection = tmp_path / "collection"  # one shard of the same codes, with ids
    collection.mkdir()
    with container.SpcWriter(collection / "shard-00000.spc", kind="sign", d=16, param=16,
                             bits=16, code_bytes=2, input_dim=16, input_dtype="float32",
                             catalyzer_sha256="ab" * 32, with_ids=True) as writer:
        writer.append(np.zeros((3, 2), dtype=np.uint8), np.arange(3))
    collection_dir.write_manifest(collection, collection_dir.Manifest(
        "ab" * 32, QuantizerSpec("sign", 16, 16), 16, 10, (collection_dir.ShardEntry(
            "shard-00000.spc", 3, 0, 2, False,
            container.read_header(collection / "shard-00000.spc").payload_sha256),)))
    script = "\n".join([
        "import sys",
        *(f"import spreadcode.{name}" for name in LIGHT_MODULES),
        "from spreadcode.commands import info_command",
        *(f"assert info_command({str(path)!r}, store_path={str(tmp_path / 'store')!r}).ok"
          for path in (spc, collection)),
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))",
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

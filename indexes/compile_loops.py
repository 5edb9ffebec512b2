"""Compile the index's search loops ahead of time into a small extension module, so that a one-shot
query loads them in a millisecond instead of importing numba (0.3-0.5 s) and its JIT cache.

    python -m indexes.compile_loops     # `make setup` runs it; about a minute on one core

The module lands in ~/.cache/curate/search_loops/<digest>/, named by the source of
indexes/search_loops.py, the numpy version and the Python ABI, so an edited source never runs a
stale build (indexes/search_loops.py then falls back to numba's JIT). Built with numba's `pycc`
from the very functions the JIT compiles, with the argument types the engine passes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType


def compile_loops(force: bool = False) -> Path:
    """Build the extension module if this source has none yet; returns its path."""
    from indexes import search_loops

    target = search_loops.aot_path()
    if target.is_file() and not force:
        return target
    jit = _jit_copy(search_loops.__file__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc's pending-deprecation notice
        from numba.pycc import CC

    build = Path(tempfile.mkdtemp(prefix="curate-loops-"))
    try:
        cc = CC(search_loops.AOT_MODULE)
        cc.output_dir = str(build)
        cc.verbose = False
        for name, signature in search_loops.SIGNATURES.items():
            function = getattr(jit, name.removesuffix("_i4").removesuffix("_i8"))
            cc.export(name, signature)(function.py_func)
        cc.compile()
        built = next(build.glob(f"{search_loops.AOT_MODULE}*"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(built, tmp)
        os.replace(tmp, target)  # a concurrent reader sees the whole file or none
    finally:
        shutil.rmtree(build, ignore_errors=True)
    for stale in target.parent.parent.iterdir():  # builds of earlier sources
        if stale != target.parent:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _jit_copy(source: str) -> ModuleType:
    """A private copy of indexes/search_loops.py bound to the JIT (pycc compiles the JIT's functions,
    whose calls between kernels resolve to the copy's dispatchers), whatever this process loaded."""
    previous = os.environ.get("CURATE_INDEX_LOOPS")
    os.environ["CURATE_INDEX_LOOPS"] = "jit"
    try:
        spec = importlib.util.spec_from_file_location("_curate_search_loops_jit", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["CURATE_INDEX_LOOPS"]
        else:
            os.environ["CURATE_INDEX_LOOPS"] = previous
    return module


if __name__ == "__main__":
    print(f"search loops compiled: {compile_loops(force='--force' in sys.argv)}")

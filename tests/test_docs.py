"""The documentation's Python examples run as written, and the site builds in strict mode."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinklabel import available_backends

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Every page with a Python example: none is left out by forgetting to list it.
PAGES = sorted(page.name for page in DOCS.glob("*.md") if FENCE.search(page.read_text()))
#: An example importing one of these runs only where sinklabel has that backend...
LIBRARY_IMPORT = re.compile(r"^\s*import (torch|cupy)\b", re.MULTILINE)
#: ...and so does one using a name an earlier block imported (``dist``: torch.distributed).
LIBRARY_USE = re.compile(r"\b(torch|cupy|dist)\.")
#: ...and one asking for an option of the Numba backend, which is optional too...
NUMBA_USE = re.compile(r"\bcache=True\b|\bbackend=[\"']numba[\"']")
#: ...and one importing any other library that is not installed (h5py, scikit-learn).
IMPORT = re.compile(r"^\s*(?:import|from) (\w+)", re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    return FENCE.findall((DOCS / page).read_text())


def runnable(block: str) -> bool:
    names = set(LIBRARY_IMPORT.findall(block)) | set(LIBRARY_USE.findall(block))
    needed = {"torch" if name == "dist" else name for name in names}
    if NUMBA_USE.search(block):
        needed.add("numba")
    installed = all(importlib.util.find_spec(name) for name in IMPORT.findall(block))
    return installed and needed <= set(available_backends())


def defined_in(name: str | None, code: str) -> bool:
    """Whether ``code`` names ``name`` (a NameError's), so that it may have defined it."""
    return name is not None and re.search(rf"\b{re.escape(name)}\b", code) is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def reader_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a reader's fresh session would give the examples, undone afterwards.

    Files the examples write land in a temporary folder; the distributed examples find
    torchrun's variables for one rank, on a free port (a fixed one could be taken by another
    run on the machine), and a process group an example left behind is destroyed.
    """
    monkeypatch.chdir(tmp_path)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    yield
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.usefixtures("reader_session")
def test_page_examples_run(page: str) -> None:
    """Each page's blocks run in order in one namespace, as a reader would paste them."""
    blocks = python_blocks(page)
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    ran = 0
    skipped = ""
    for number, block in enumerate(blocks, 1):
        if not runnable(block):
            skipped += block
            continue
        code = compile(block, f"{page} (example {number})", "exec")
        try:
            exec(code, namespace)  # noqa: S102 - running the docs' own examples is the test
        except NameError as exc:
            if not defined_in(exc.name, skipped):
                raise
            skipped += block  # it builds on an example that needs what is not installed
            continue
        ran += 1
    if blocks and not ran:
        pytest.skip(f"{page}: every example needs a library that is not installed")


def test_pages_found() -> None:
    """The pages are discovered where the site is built from, user guide included."""
    assert {"index.md", "getting-started.md", "exact.md", "streaming.md"} <= set(PAGES)


def test_block_parsing() -> None:
    """Only python fences are run, and a block needing a missing backend is recognised."""
    text = "```bash\npip install x\n```\n```python\nx = 1\n```\n"
    assert FENCE.findall(text) == ["x = 1\n"]
    assert runnable("import numpy as np")
    assert runnable("import cupy") == ("cupy" in available_backends())
    has_torch = "torch" in available_backends()
    assert runnable("if torch.cuda.is_available():\n    pass") == has_torch
    assert runnable("dist.destroy_process_group()") == has_torch
    assert runnable("sinklabel.distributed.RankFailedError")
    has_numba = "numba" in available_backends()
    assert runnable("sinklabel.sinkhorn(logp, 10, cache=True)") == has_numba
    assert runnable("sinklabel.sinkhorn(logp, 10, backend='numba')") == has_numba
    assert not runnable("import numpy as np\nfrom no_such_library import x")
    assert defined_in("CallableSource", "from sinklabel.sources import CallableSource\n")
    assert not defined_in("Callable", "from sinklabel.sources import CallableSource\n")


def documented_object(path: str) -> object:
    """What ``::: path`` renders: a submodule wins over a name its package imports, as in
    mkdocstrings (``sinklabel.check`` is the module check.py, not the function)."""
    parts = path.split(".")
    found: object = importlib.import_module(parts[0])
    for end in range(2, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if hasattr(found, "__path__") and importlib.util.find_spec(prefix) is not None:
            found = importlib.import_module(prefix)
        else:
            found = getattr(found, parts[end - 1])
    return found


def test_api_reference_renders_the_public_objects() -> None:
    """``::: sinklabel.check`` rendered the module: its docstring, a helper the package does
    not export and CheckReport a second time, in place of the function's signature."""
    paths = re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(), flags=re.MULTILINE)
    assert len(paths) > 10
    for path in paths:
        found = documented_object(path)
        assert not inspect.ismodule(found), f"api.md: ::: {path} is a module"
        assert found.__name__ == path.rsplit(".", 1)[1], path


def test_api_reference_shows_no_raw_sphinx_roles() -> None:
    """The docstrings cite each other with Sphinx roles, which mkdocstrings printed as text
    (":func:sinklabel.sinkhorn"); the extension mkdocs.yml names turns them into code."""
    griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra")
    config = (ROOT / "mkdocs.yml").read_text()
    extension = re.search(r"- (docs/sphinx_roles\.py:\w+)", config).group(1)
    package = griffe.load("sinklabel", search_paths=[str(ROOT)],
                          extensions=griffe.load_extensions(str(ROOT / extension)))
    raw = re.compile(r":(func|class|meth|mod|data|attr|exc|obj):`")
    seen, left = 0, []
    stack = [package]
    while stack:
        obj = stack.pop()
        if obj.is_alias:
            continue
        stack.extend(obj.members.values())
        if obj.docstring is not None:
            seen += 1
            if raw.search(obj.docstring.value):
                left.append(obj.path)
    assert seen > 100
    assert not left, left


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

"""The documentation's Python examples run as written, and the site builds in strict mode."""

from __future__ import annotations

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


def python_blocks(page: str) -> list[str]:
    return FENCE.findall((DOCS / page).read_text())


def runnable(block: str) -> bool:
    names = set(LIBRARY_IMPORT.findall(block)) | set(LIBRARY_USE.findall(block))
    needed = {"torch" if name == "dist" else name for name in names}
    return needed <= set(available_backends())


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
    for number, block in enumerate(blocks, 1):
        if not runnable(block):
            continue
        code = compile(block, f"{page} (example {number})", "exec")
        exec(code, namespace)  # noqa: S102 - running the docs' own examples is the test
        ran += 1
    if blocks and not ran:
        pytest.skip(f"{page}: every example needs a backend that is not installed")


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

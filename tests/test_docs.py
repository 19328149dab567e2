"""The documentation's Python examples run as written, and the site builds in strict mode."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sinklabel import available_backends

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose examples run here; a user-guide page joins by adding its name.
PAGES = ["index.md", "getting-started.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: An example importing one of these runs only where sinklabel has that backend.
LIBRARY_IMPORT = re.compile(r"^\s*import (torch|cupy)\b", re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    return FENCE.findall((DOCS / page).read_text())


def runnable(block: str) -> bool:
    return all(lib in available_backends() for lib in LIBRARY_IMPORT.findall(block))


@pytest.mark.parametrize("page", PAGES)
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


def test_pages_listed_exist() -> None:
    missing = [page for page in PAGES if not (DOCS / page).exists()]
    assert not missing


def test_block_parsing() -> None:
    """Only python fences are run, and a block needing a missing backend is recognised."""
    text = "```bash\npip install x\n```\n```python\nx = 1\n```\n"
    assert FENCE.findall(text) == ["x = 1\n"]
    assert runnable("import numpy as np")
    assert runnable("import cupy") == ("cupy" in available_backends())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

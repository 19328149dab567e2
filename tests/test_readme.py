"""The README's usage example runs as written and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(blocks[0], namespace)
    counts = np.bincount(namespace["labels"], minlength=10)
    assert counts.sum() == 5000 and np.abs(counts - 500).max() <= 25
    assert namespace["new_labels"].shape == (100,)
    assert namespace["labeler"].converged_

"""What ``pip install sinklabel`` gives a user: the built sdist and wheel, installed outside the
checkout.

The sdist is built from a copy of the source tree and the wheel from that sdist, as
``python -m build`` does (without build isolation: the setuptools here builds), so a file the
sdist forgets is missing from the wheel too. pip installs the wheel into a scratch folder, and
the installed package runs from another one, where the checkout cannot be imported by accident.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sinklabel
from sinklabel.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: version control, build output and caches (as in .gitignore): never part of a build's input
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "site", "*.egg-info", "__pycache__", ".*cache", ".hypothesis",
    ".benchmarks", "bench-results", ".venv", "*.npy",
)
OPTIONAL = ("torch", "numba", "cupy", "triton", "tqdm", "h5py")

#: the data-only extraction filter where this Python has it (3.10.12, 3.11.4 and later)
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _build(kind: str, source: Path, out: Path) -> Path:
    """``kind`` ("sdist" or "wheel") of the project in ``source``, through setuptools' PEP 517
    hooks in a fresh interpreter (they work in the current directory)."""
    hook = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", hook], cwd=source, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, the wheel built from it, and the wheel installed by pip ("site")."""
    if _setuptools_version() < (77, 0):
        pytest.skip("building needs setuptools >= 77, as pyproject.toml's build-system says")
    scratch = tmp_path_factory.mktemp("packaging")
    shutil.copytree(ROOT, scratch / "source", ignore=NOT_SOURCE)
    sdist = _build("sdist", scratch / "source", scratch)
    with tarfile.open(sdist) as archive:
        archive.extractall(scratch / "unpacked", **SAFE_EXTRACT)
    wheel = _build("wheel", next((scratch / "unpacked").iterdir()), scratch)
    site = scratch / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--no-compile", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return {"sdist": sdist, "wheel": wheel, "site": site, "elsewhere": scratch}


def _installed(artefacts: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """A command run with the installed wheel, from outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(artefacts["site"])}
    return subprocess.run(args, cwd=artefacts["elsewhere"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_sdist_holds_what_builds_and_tests_the_package(artefacts):
    with tarfile.open(artefacts["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {
        "pyproject.toml", "README.md", "LICENSE", "requirements-test.txt",
        "requirements-minimal.txt", "mkdocs.yml", "CHANGELOG.md", "CITATION.cff",
        "sinklabel/py.typed", "tests/conftest.py", "tests/reference.py",
        "tests/test_packaging.py", "benchmarks/conftest.py", "examples/balanced_kmeans.py",
        "docs/index.md", "docs/img/compare.png",
    }
    assert needed <= names, sorted(needed - names)
    junk = [name for name in names if "__pycache__" in name or name.endswith(".pyc")
            or name.startswith(("site/", "build/", ".git/", ".ci/"))]
    assert not junk


def test_wheel_ships_the_package_alone_typed_and_licensed(artefacts):
    names = set(zipfile.ZipFile(artefacts["wheel"]).namelist())
    info = f"sinklabel-{sinklabel.__version__}.dist-info/"
    assert {name for name in names if not name.startswith(("sinklabel/", info))} == set()
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "sinklabel").rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # every subpackage, none left behind
    assert {"sinklabel/py.typed", f"{info}licenses/LICENSE"} <= names
    license_text = zipfile.ZipFile(artefacts["wheel"]).read(f"{info}licenses/LICENSE").decode()
    assert "BSD 3-Clause" in license_text and "sinklabel developers" in license_text


def test_wheel_metadata(artefacts):
    info = f"sinklabel-{sinklabel.__version__}.dist-info/METADATA"
    text = zipfile.ZipFile(artefacts["wheel"]).read(info).decode()
    metadata = email.parser.HeaderParser().parsestr(text)
    assert metadata["Name"] == "sinklabel" and metadata["Version"] == sinklabel.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().startswith("# sinklabel")  # the README as description
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"numba", "torch", "cupy", "progress", "test", "bench", "docs", "examples",
            "all"} <= extras
    (combined,) = [req for req in metadata.get_all("Requires-Dist") if 'extra == "all"' in req]
    named = set(re.search(r"sinklabel\[([\w,]+)\]", combined).group(1).split(","))
    assert named and named <= extras - {"all"}


def test_installed_package_is_the_wheel_with_its_version_and_no_optional_imports(artefacts):
    probe = (
        "import importlib.metadata, sys, sinklabel; "
        "print(sinklabel.__file__); print(sinklabel.__version__); "
        "print(importlib.metadata.version('sinklabel')); "
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    done = _installed(artefacts, sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    where, version, distribution, optional = done.stdout.splitlines()
    assert Path(where).is_relative_to(artefacts["site"])  # not the checkout
    assert version == distribution == sinklabel.__version__
    assert optional == "[]"


def test_installed_command_line(artefacts):
    script = artefacts["site"] / "bin" / "sinklabel"  # the console script pip wrote
    expected = f"sinklabel {sinklabel.__version__}\n"
    for command in ([str(script)], [sys.executable, "-m", "sinklabel"]):
        version = _installed(artefacts, *command, "--version")
        assert (version.returncode, version.stdout) == (0, expected), version.stderr
        helped = _installed(artefacts, *command, "--help")
        assert helped.returncode == 0 and "--version" in helped.stdout
        assert all(name in helped.stdout for name in ("demo", "assign", "check"))
    demo = _installed(artefacts, str(script), "demo", "-n", "600", "-k", "6", "--regime", "flat",
                      "--backend", "numpy", "--no-progress")
    assert demo.returncode == 0, demo.stderr
    assert "(converged)" in demo.stdout


def test_version_flag_returns_instead_of_exiting(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sinklabel {sinklabel.__version__}\n"


def test_a_command_is_still_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required: command" in capsys.readouterr().err


def test_the_api_reference_documents_exactly_the_public_names():
    page = (ROOT / "docs" / "api.md").read_text()
    # ``::: sinklabel.check.check``: the function, where ``sinklabel.check`` is the module.
    documented = {name for _, name in
                  re.findall(r"^::: (sinklabel\.(\w+)(?:\.\2)?)$", page, flags=re.MULTILINE)}
    assert documented == set(sinklabel.__all__)
    assert all(hasattr(sinklabel, name) for name in sinklabel.__all__)


def test_the_minimal_install_pins_the_oldest_versions_pyproject_allows():
    """CI's run on a plain install (requirements-minimal.txt) tests the dependency floors only
    while it pins what pyproject.toml says is the oldest: a floor raised or lowered in one file
    and not the other fails here."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = dict(re.fullmatch(r"([\w-]+)>=([\d.]+)(?:; .*)?", requirement).groups()
                  for requirement in project["dependencies"])
    lines = [line for line in (ROOT / "requirements-minimal.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    pins = dict(line.split(";")[0].split("==") for line in lines if "==" in line)
    assert pins.keys() == floors.keys()
    for name, floor in floors.items():
        assert pins[name] == floor or pins[name].startswith(floor + "."), name
    assert "-e ." in lines and not any(extra in line for line in lines for extra in OPTIONAL)

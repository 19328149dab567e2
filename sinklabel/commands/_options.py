"""Solver options shared by the commands that solve."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .._validation import check_positive
from ..api import DEFAULT_LAM, DEFAULT_MAX_ITER, DEFAULT_TOL
from ..sources.arrays import check_npy_file
from ..sources.memory import parse_memory

#: The commands read scores into NumPy arrays, which only these backends take.
BACKENDS = ("auto", "numba", "numpy")


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse ``type`` for a finite number > 0, so that a bad value is an argparse error
    naming the option, before any scores are generated or read."""
    noun = "integer" if kind is int else "number"

    def parse(text: str) -> Any:
        try:  # the library's own rule for lam, tol, max_iter and chunk_size
            return check_positive("value", kind(text), integer=kind is int)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, got {text!r}") from None

    return parse


def memory_size(text: str) -> str:
    """An argparse ``type`` for a memory budget such as ``2GB``, checked by the library's own
    parser so that a bad one is refused by option name before any work."""
    try:
        parse_memory(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a size above 0 such as 2GB or 512MiB, got {text!r}") from None
    return text


def add_solver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lam", type=positive(float), default=DEFAULT_LAM,
                        help="inverse temperature (default: %(default)s)")
    parser.add_argument("--tol", type=positive(float), default=DEFAULT_TOL,
                        help="L1 label-marginal error to stop at (default: %(default)s)")
    parser.add_argument("--max-iter", type=positive(int), default=DEFAULT_MAX_ITER,
                        help="most iterations, one pass over the scores each; labelling "
                        "takes one more pass (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: numba when installed, else numpy (default: %(default)s)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--chunk-size", type=positive(int), default=None,
                      help="rows per chunk (default: the backend's)")
    size.add_argument("--memory-limit", type=memory_size, default=None, metavar="SIZE",
                      help="budget for the solve's extra memory, such as 2GB or 512MiB: "
                      "chunks shrink to fit it (default: no budget)")
    parser.add_argument("--cache", action="store_true",
                        help="numba backend only: keep the exponentials that can matter "
                        "between passes, so later passes do not read the scores (faster, "
                        "more memory; counted in --memory-limit)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar")


def solver_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "lam": args.lam, "tol": args.tol, "max_iter": args.max_iter, "backend": args.backend,
        "chunk_size": args.chunk_size, "memory_limit": args.memory_limit, "cache": args.cache,
        "progress": args.progress,
    }


def summarize(result: Any, seconds: float) -> str:
    """A few lines on a solve: passes, error, label sizes against their targets, time."""
    counts = result.label_counts
    n = int(counts.sum())
    target = result.label_weights * n
    spread = counts / target
    # One number for even targets ("target 200.0..200.0" read as a range of one value).
    targets = (f"{target.min():.1f}" if target.min() == target.max()
               else f"{target.min():.1f}..{target.max():.1f}")
    status = "converged" if result.converged else "NOT converged"
    return "\n".join([
        f"backend           {result.backend}",
        f"iterations        {result.n_iter} ({status})",
        f"marginal error    {result.error:.2e} (L1)",
        f"label sizes       min {counts.min()}, max {counts.max()}, "
        f"target {targets}",
        f"size / target     {spread.min():.3f} .. {spread.max():.3f}",
        f"empty labels      {int((counts == 0).sum())}",
        *([] if result.certificate is None else [
            f"exact labels      gap {result.certificate.gap:.3g} "
            f"({'certified optimal' if result.certificate.optimal else 'NOT certified'})"]),
        f"time              {seconds:.2f} s",
    ])


def check_k(k: int | None, shape: tuple[int, ...]) -> None:
    """Refuse a ``-k`` other than the scores' column count, by its flag (the library's
    error names its own argument, ``K``)."""
    if k is not None and k != shape[1]:
        hint = " (the file looks transposed: save the scores transposed)" if k == shape[0] else ""
        raise ValueError(f"-k {k} but the scores have shape {tuple(shape)}{hint}")


def load_npy(path: str, what: str) -> np.ndarray:
    """A whole ``.npy`` array, with an error naming ``what`` it should hold when it is not
    one (``np.load`` would return an ``.npz`` archive or call any file pickled data), is
    missing or is a folder."""
    check_npy_file(path, what)
    with open(path, "rb") as file:
        try:
            return np.lib.format.read_array(file, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{what}: {path!r} is not a .npy array file ({exc})") from exc


def check_outputs(outputs: list[tuple[str | None, str | None]],
                  inputs: dict[str, str | None]) -> None:
    """Fail before any work when an output path cannot be written, would overwrite an input
    file (``inputs``: what it holds -> its path) other than the one it may replace, or is
    named twice (the second save would silently replace the first). ``outputs``: each path
    with what it may replace (None: nothing), a path of None not asked for, as an input."""
    paths = [path for path, _ in outputs if path is not None]
    for path, replaces in outputs:
        if path is None:
            continue
        _check_writable(path)
        for what, given in inputs.items():
            # A missing input is not compared here: opening it names it as missing.
            if given and what != replaces and _same_file(path, given):
                raise ValueError(f"{path!r} is the {what} file; choose another output path")
    real = [os.path.realpath(path) for path in paths]
    for index, path in enumerate(paths):
        if real[index] in real[:index]:
            raise ValueError(f"{path!r} is named for two outputs; give each its own path")


def _same_file(path: str, other: str) -> bool:
    return os.path.exists(path) and os.path.exists(other) and os.path.samefile(path, other)


def _check_writable(path: str) -> None:
    """Raise unless ``path`` can be saved to, by creating (and removing) the file the save
    itself would first write: a folder's mode says nothing for root, and nothing at all of
    a folder such as /proc, where no file can be created."""
    if not path:  # abspath("") is the working folder, and the save would replace it
        raise ValueError("cannot write '': the output path is empty; name a file")
    if path.endswith((os.sep, os.altsep or os.sep)) and not os.path.isdir(path):
        # abspath drops the separator: "new/" would be saved as a file named "new"
        raise NotADirectoryError(f"cannot write {path!r}: it names a folder, and there is no "
                                 "such folder; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder; name a file in it")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path!r}: no such folder {folder!r}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write {path!r}: the file is not writable")
    if _written_in_place(path):
        return
    try:
        os.remove(_create_temporary(path))
    except OSError as exc:
        raise OSError(
            f"cannot write {path!r}: no file can be created in {folder!r} ({exc.strerror})"
        ) from exc


def _create_temporary(path: str) -> str:
    """A new empty file beside the (real) file ``path`` names, created with the usual
    permissions (``mkstemp``'s are owner-only); its path."""
    temporary = f"{os.path.realpath(path)}.{os.getpid()}.tmp"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temporary


def _written_in_place(path: str) -> bool:
    """Whether ``path`` names a device or a pipe (``/dev/null``, ``/dev/stdout``), which is
    written as it is: moving a temporary file onto it would replace the device itself (as
    root, ``-o /dev/null`` left a regular file in place of /dev/null)."""
    return os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)


def save_outputs(outputs: dict[str, np.ndarray]) -> None:
    """Save each array to exactly its path (``np.save`` would add ``.npy`` to a path without
    it), all or none: each goes to a temporary file beside its path first, and only once all
    are written do they replace the paths, so a failed save (a full disk) leaves no mix of
    new and old or missing outputs. Devices and pipes are written in place, last."""
    in_place = [path for path in outputs if _written_in_place(path)]
    replaced = [path for path in outputs if path not in in_place]
    written: list[str] = []
    try:
        for path in replaced:
            written.append(_create_temporary(path))
            _save(written[-1], outputs[path])
        for path in in_place:
            _save_in_place(path, outputs[path])
    except BaseException:
        for temporary in written:
            os.remove(temporary)
        raise
    for index, (path, temporary) in enumerate(zip(replaced, written, strict=True)):
        try:
            os.replace(temporary, os.path.realpath(path))
        except BaseException:
            for leftover in written[index:]:  # no temporary file is left behind
                with contextlib.suppress(OSError):
                    os.remove(leftover)
            raise


def _save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, array)


def _save_in_place(path: str, array: np.ndarray) -> None:
    """Save through memory: ``np.save`` asks a pipe for its file position, which fails."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    with open(path, "wb") as file:
        file.write(buffer.getbuffer())

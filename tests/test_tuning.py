"""The launch-configuration tuner shared by the CUDA backends, driven by fake kernels: it must
choose the fastest configuration that agrees with the default, never a faster wrong one."""

from __future__ import annotations

import numpy as np
import pytest

from sinklabel.kernels._tuning import AGREEMENT, Tuner, _disagreement


class CannotLaunch(Exception):
    pass


class FakeKernel:
    """Configurations named by letter: ``speed`` gives each one's milliseconds, ``error`` the
    relative error of its result, ``broken`` those that cannot launch, ``holes`` those whose
    masses have one NaN among finite values."""

    def __init__(self, speed: dict, error: dict | None = None, broken: tuple = (),
                 holes: tuple = ()):
        self.speed, self.error, self.broken, self.holes = speed, error or {}, broken, holes
        self.launched: list[str] = []
        self.last = None

    def launch(self, config: tuple) -> None:
        (name,) = config
        if name in self.broken:
            raise CannotLaunch(name)
        self.launched.append(name)
        self.last = name

    def result(self) -> tuple[tuple[np.ndarray, float], tuple[float, float]]:
        """Masses, and a log-sum-exp total over 1000 rows that cancels to about 0."""
        error = self.error.get(self.last, 0.0)
        masses = np.linspace(1.0, 2.0, 5) * (1 + error)
        if self.last in self.holes:
            masses[2] = np.nan
        lse = 1e-6 * (1 + 1000 * abs(error)) if self.last != "a" else -1e-6
        return (masses, 0.0), (lse, 1000.0)

    def elapsed(self, run) -> float:
        before = len(self.launched)
        run()
        assert len(self.launched) == before + 1
        return self.speed[self.launched[-1]]

    def tuner(self) -> Tuner:
        return Tuner(self.elapsed, lambda: (CannotLaunch,))


CANDIDATES = [("a",), ("b",), ("c",), ("d",)]


def test_picks_the_fastest_candidate_once_per_key_and_reuses_it():
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0})
    tuner = kernel.tuner()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert tuner.chosen == {"key": ("c",)} and kernel.last == "c"
    kernel.launched.clear()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert kernel.launched == ["c"]                     # no second round of timing
    assert tuner.report(str) == {"key": {
        "chosen": ["c"], "rejected": [],
        "timed": [[["a"], 3.0], [["b"], 2.0], [["c"], 1.0], [["d"], 4.0]]}}


def test_small_inputs_take_the_default_without_timing():
    kernel = FakeKernel({"a": 3.0, "b": 1.0, "c": 1.0, "d": 1.0})
    tuner = kernel.tuner()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=False)
    assert kernel.launched == ["a"] and tuner.chosen == {}


def test_a_faster_candidate_that_disagrees_is_never_chosen():
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5},
                        error={"c": 10 * AGREEMENT, "d": np.nan})
    tuner = kernel.tuner()
    with pytest.warns(RuntimeWarning, match=r"\[\('c',\), \('d',\)\].*disagree with the default"):
        tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("b",)
    assert [config for config, _ in tuner.rejected["key"]] == [("c",), ("d",)]


def test_a_candidate_with_one_nan_among_its_masses_disagrees():
    kernel = FakeKernel({"a": 3.0, "b": 1.0}, holes=("b",))
    tuner = kernel.tuner()
    with pytest.warns(RuntimeWarning, match="disagree"):
        tuner.run(kernel.launch, CANDIDATES[:2], "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("a",)


def test_the_default_is_the_reference_even_when_the_next_candidate_is_wrong():
    kernel = FakeKernel({"a": 3.0, "b": 1.0, "c": 2.0}, error={"b": 10 * AGREEMENT})
    tuner = kernel.tuner()
    with pytest.warns(RuntimeWarning, match=r"\[\('b',\)\]"):
        tuner.run(kernel.launch, CANDIDATES[:3], "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("c",)
    assert kernel.launched[0] == "a"  # the reference is the default's own result


def test_two_candidates_are_timed_and_one_is_not():
    kernel = FakeKernel({"a": 3.0, "b": 1.0})
    tuner = kernel.tuner()
    assert not tuner.will_time("key", CANDIDATES[:1], tune=True)
    assert tuner.will_time("key", CANDIDATES[:2], tune=True)
    tuner.run(kernel.launch, CANDIDATES[:2], "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("b",)


@pytest.mark.parametrize("value, reference, floor, expected", [
    ([2e-6, 1e-6], [1e-6, 1e-6], 0.0, 1.0),  # relative to the reference, however small
    ([2e-6, 1e-6], [1e-6, 1e-6], 1e-3, 1e-3),  # or to the floor where that is larger
    ([1.0, 2.5], [1.0, 2.0], 0.0, 0.25),  # on the largest magnitude
    ([0.0], [0.0], 0.0, 0.0),
    ([1.0, np.inf], [1.0, 2.0], 0.0, np.inf),
    ([1.0], [1.0, 2.0], 0.0, np.inf),  # another shape
])
def test_disagreement_is_relative_to_the_reference_or_floor(value, reference, floor, expected):
    assert _disagreement(np.array(value), np.array(reference), floor) == pytest.approx(expected)


def test_a_sum_that_cancels_to_zero_is_compared_on_its_floor():
    """The log-sum-exp total of scores near 0 is rounding noise: candidates whose totals
    differ by a large factor but tiny amounts still agree."""
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0})
    tuner = kernel.tuner()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("c",) and tuner.rejected["key"] == []


def test_rounding_differences_are_agreement():
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0}, error={"c": AGREEMENT / 10})
    tuner = kernel.tuner()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("c",)


def test_a_candidate_that_cannot_launch_is_skipped_without_a_warning(recwarn):
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0}, broken=("c",))
    tuner = kernel.tuner()
    tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)
    assert tuner.chosen["key"] == ("b",)
    assert tuner.rejected["key"] == [(("c",), "cannot launch: c")]
    assert not recwarn.list


def test_other_errors_propagate():
    kernel = FakeKernel({"a": 3.0, "b": 2.0, "c": 1.0, "d": 4.0}, broken=("b",))
    tuner = Tuner(kernel.elapsed, lambda: (KeyError,))
    with pytest.raises(CannotLaunch):
        tuner.run(kernel.launch, CANDIDATES, "key", kernel.result, tune=True)

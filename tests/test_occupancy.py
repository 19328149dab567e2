"""Whole waves of programs for the fused GPU sweeps (``kernels/_occupancy.py``), without a GPU:
the arithmetic of the grid, and the driver call through a stand-in."""

from __future__ import annotations

import pytest

from sinklabel.kernels import _occupancy


@pytest.mark.parametrize("cap, processors, resident, expected", [
    (4224, 132, 5, 3960),   # 6.4 waves of a 16-bit pick at ImageNet scale: 6 whole ones
    (4224, 132, 4, 4224),   # the float32 picks: 8 whole waves already
    (4224, 132, None, 4224),  # the driver could not say
    (500, 132, 5, 500),     # under one wave: all of it
    (660, 132, 5, 660),     # exactly one wave
    (1319, 132, 5, 660),
    (1000, 132, 1, 924),    # one resident program (a kernel at the register limit)
    (4224, 132, 33, 4224),  # more resident than a wave of the cap
])
def test_whole_waves_cut_the_grid_to_full_waves(cap, processors, resident, expected):
    assert _occupancy.whole_waves(cap, processors, resident) == expected


def test_whole_waves_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(_occupancy, "WHOLE_WAVES", False)
    assert _occupancy.whole_waves(4224, 132, 5) == 4224


class _FakeDriver:
    """cuOccupancyMaxActiveBlocksPerMultiprocessor as the CUDA driver answers it."""

    def __init__(self, blocks: int, status: int = 0):
        self.blocks, self.status, self.calls = blocks, status, []

    def cuOccupancyMaxActiveBlocksPerMultiprocessor(self, count, function, threads, shared):
        self.calls.append((function.value, threads.value, shared.value))
        count._obj.value = self.blocks
        return self.status


@pytest.mark.parametrize("blocks", [1, 5])
def test_resident_blocks_asks_the_driver_for_the_kernel_and_launch(blocks, monkeypatch):
    driver = _FakeDriver(blocks)
    monkeypatch.setattr(_occupancy, "_driver", lambda: driver)
    assert _occupancy.resident_blocks(0x1234, 128, 12304) == blocks
    assert driver.calls == [(0x1234, 128, 12304)]


@pytest.mark.parametrize("driver", [None, object(), _FakeDriver(5, status=1), _FakeDriver(0)])
def test_resident_blocks_is_none_where_the_driver_cannot_say(driver, monkeypatch):
    monkeypatch.setattr(_occupancy, "_driver", lambda: driver)
    assert _occupancy.resident_blocks(0x1234, 128, 0) is None


class _FakeCompiled:
    """What Triton's ``warmup`` gives back: a compiled kernel, to be loaded."""

    def __init__(self):
        self.function, self.metadata = 77, type("Metadata", (), {"shared": 12304})

    def _init_handles(self):
        pass


class _FakeFuture:
    """What Triton's asynchronous compile mode gives back instead: a future of the kernel."""

    def result(self):
        return _FakeCompiled()


@pytest.mark.parametrize("compiled, expected", [
    (_FakeCompiled(), 5), (_FakeFuture(), 5),
    (None, None),  # a compile hook declined: no kernel to ask about
])
def test_triton_sweep_asks_the_driver_about_its_compiled_kernel(compiled, expected,
                                                                monkeypatch):
    pytest.importorskip("triton")
    from sinklabel.kernels import _triton

    calls = []
    fake = type("Sweep", (), {"warmup": staticmethod(lambda *a, grid, **o: compiled)})
    monkeypatch.setattr(_triton, "_sweep_fused", fake)
    monkeypatch.setattr(_triton, "resident_blocks",
                        lambda function, threads, shared: calls.append(
                            (function, threads, shared)) or 5)
    assert _triton._compiled_resident(dict(num_warps=4), ()) == expected
    assert calls == ([(77, 128, 12304)] if expected else [])


def test_triton_sweep_leaves_a_kernel_that_cannot_launch_to_the_tuner(monkeypatch):
    """A configuration too large for the device raises at its launch, where the tuner skips
    it; asking about its occupancy first must not raise instead."""
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from sinklabel.kernels import _triton

    def too_large(*args, grid, **options):
        raise OutOfResources(300000, 232448, "shared memory")

    fake = type("Sweep", (), {"warmup": staticmethod(too_large)})
    monkeypatch.setattr(_triton, "_sweep_fused", fake)
    assert _triton._compiled_resident(dict(num_warps=4), ()) is None

"""Pure planning functions: chunk shapes, factors, scale boxes, keys, stage plans."""
import pytest

from ngconvert.core.geometry import Box, ChunkGrid, chunk_key
from ngconvert.plan.stages import plan_stages
from ngconvert.plan.pyramid import choose_chunk_size, plan_factors, scale_boxes
from ngconvert.plan.spec import LayerSpec


def test_chunk_size_isotropic_anisotropic_and_thin():
    assert choose_chunk_size((512, 512, 512), (1, 1, 1)) == (64, 64, 64)
    assert choose_chunk_size((4096, 4096, 300), (4, 4, 40)) == (128, 128, 16)
    assert choose_chunk_size((2000, 2000, 1), (1, 1, 1)) == (512, 512, 1)
    assert choose_chunk_size((10, 10, 10), (1, 1, 1)) == (16, 16, 16)


def test_factors_make_anisotropic_data_isotropic_before_reducing_z():
    f = plan_factors(Box((0, 0, 0), (4096, 4096, 512)), (4, 4, 40), (128, 128, 16))
    assert f[:3] == [(2, 2, 1)] * 3
    assert f[3] == (2, 2, 2)


def test_pyramid_goes_down_to_a_single_chunk():
    for shape in [(128, 128, 128), (97, 61, 33), (1000, 3, 1)]:
        bounds = Box((0, 0, 0), shape)
        chunk = (64, 64, 64)
        boxes = scale_boxes(bounds, plan_factors(bounds, (1, 1, 1), chunk))
        assert ChunkGrid(boxes[-1], chunk).count == 1
        assert all(ChunkGrid(b, chunk).count > 1 for b in boxes[:-1])


def test_max_mips_and_fixed_factor():
    bounds = Box((0, 0, 0), (1024, 1024, 64))
    assert len(plan_factors(bounds, (1, 1, 1), (64, 64, 64), max_mips=2)) == 2
    assert set(plan_factors(bounds, (1, 1, 1), (64, 64, 64), fixed_factor=(2, 2, 1))) == {(2, 2, 1)}


def test_scale_boxes_floor_and_ceil_negative_offsets():
    boxes = scale_boxes(Box((-5, 3, 0), (92, 64, 33)), [(2, 2, 2), (2, 2, 2)])
    assert boxes[1] == Box((-3, 1, 0), (46, 32, 17))
    assert boxes[2] == Box((-2, 0, 0), (23, 16, 9))


def test_chunk_keys_absolute_and_truncated():
    grid = ChunkGrid(Box((10, 20, 30), (110, 110, 100)), (64, 64, 64))
    keys = [chunk_key(c) for c in grid.cells_in(grid.bounds)]
    assert keys[0] == "10-74_20-84_30-94"
    assert keys[-1] == "74-110_84-110_94-100"
    assert len(keys) == 8


def _layer(size, offset=(0, 0, 0), chunk=(64, 64, 64), dtype="uint8"):
    bounds = Box(offset, tuple(o + s for o, s in zip(offset, size)))
    return LayerSpec("image", dtype, 1, size, offset, (1.0, 1.0, 1.0), chunk,
                     plan_factors(bounds, (1, 1, 1), chunk))


@pytest.mark.parametrize("size,offset", [((512, 512, 512), (0, 0, 0)), ((300, 200, 100), (-7, 5, 3)),
                                         ((1024, 64, 64), (0, 0, 0))])
def test_stages_cover_every_level_once_and_tasks_tile_the_top_level(size, offset):
    layer = _layer(size, offset)
    stages = plan_stages(layer, workers=2, task_bytes=8 << 20)
    written = [lvl for s in stages for lvl in range(s.first, s.top + 1)]
    assert written == list(range(len(layer.factors) + 1))
    from ngconvert.plan.stages import Plan
    from ngconvert.sources.open import SourceRef

    plan = Plan(layer, SourceRef("array"), "uint8", stages)
    scales = layer.scales()
    for st in stages:
        tasks = list(plan.tasks(st))
        assert len(tasks) == plan.task_count(st)
        assert sum(t.box.voxels for t in tasks) == scales[st.top].bounds.voxels
        for lvl in range(st.first, st.top + 1):   # every written level is cut on chunk boundaries
            grid = ChunkGrid(scales[lvl].bounds, layer.chunk_size)
            assert all(grid.is_aligned(plan.footprint(t, lvl)) for t in tasks)


def test_512_cube_uses_multi_level_tasks_for_two_workers():
    stages = plan_stages(_layer((512, 512, 512)), workers=2)
    assert stages[0].first == 0 and stages[0].top >= 2
    assert stages[-1].top == 3

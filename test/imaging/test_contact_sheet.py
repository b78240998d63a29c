"""Tests of cldyn_ros.imaging.contact_sheet."""

from __future__ import annotations

import numpy as np
import pytest

from cldyn_ros.imaging.contact_sheet import make_contact_sheet, save_contact_sheet
from cldyn_ros.imaging.io import read_color

TILE = 40


def _tiles():
    grey8 = np.full((20, 30), 128, np.uint8)
    rgb8 = np.zeros((20, 20, 3), np.uint8)
    rgb8[:, :, 0] = 255  # pure red
    raw16 = np.tile(np.linspace(7000, 9000, 30).astype(np.uint16), (20, 1))
    return grey8, rgb8, raw16


def test_sheet_shape_dtype_and_tiles_placed():
    grey8, rgb8, raw16 = _tiles()
    sheet = make_contact_sheet([[grey8, rgb8, raw16]] * 2, ["ir", "vis", "raw"],
                               tile_height=TILE)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    # Widths after resizing to TILE px high: 60 + 40 + 60, plus the gaps.
    assert sheet.shape[1] >= 160
    assert sheet.shape[0] >= 2 * TILE
    # The red tile keeps its colour (RGB order, no channel swap).
    red = np.all(sheet == (255, 0, 0), axis=2)
    assert red.sum() >= 2 * TILE * TILE * 0.9


def test_uint16_is_stretched_for_display():
    _, _, raw16 = _tiles()
    sheet = make_contact_sheet([[raw16]], ["raw"], tile_height=TILE)
    # A fixed /257 scaling would give a flat grey around 27-35; the stretch uses the full range.
    assert sheet.max() >= 250
    assert (sheet < 10).any()


def test_titles_are_drawn():
    grey = np.zeros((20, 20), np.uint8)  # black tiles, so any bright pixel off them is text
    plain = make_contact_sheet([[grey, grey]], ["", ""], tile_height=TILE)
    titled = make_contact_sheet([[grey, grey]], ["infrared", "visible"], tile_height=TILE)
    assert plain.shape == titled.shape
    assert (titled > 150).sum() > (plain > 150).sum() + 20
    with_rows = make_contact_sheet([[grey, grey]], ["a", "b"], ["row one"], tile_height=TILE)
    assert with_rows.shape[1] > titled.shape[1]  # a band on the left for the row titles


def test_mixed_tile_types_and_empty_cells():
    rng = np.random.default_rng(0)
    tiles = [
        rng.random((10, 15)).astype(np.float32),  # float in [0, 1]
        rng.normal(20, 5, (10, 15)),  # float temperatures: stretched
        rng.random((10, 15)) > 0.5,  # a mask
        np.zeros((10, 15, 1), np.uint8),
        np.zeros((10, 15, 4), np.uint8),
        None,
    ]
    sheet = make_contact_sheet([tiles], [str(i) for i in range(len(tiles))], tile_height=TILE)
    assert sheet.dtype == np.uint8
    # A very long title is shrunk or cut to its column instead of overflowing.
    make_contact_sheet([[tiles[0]]], ["a very long column title " * 5], tile_height=TILE)


def test_invalid_input():
    grey = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="column titles"):
        make_contact_sheet([[grey, grey]], ["one"])
    with pytest.raises(ValueError, match="row titles"):
        make_contact_sheet([[grey]], ["one"], ["a", "b"])
    with pytest.raises(ValueError):
        make_contact_sheet([], ["one"])
    with pytest.raises(ValueError):
        make_contact_sheet([[np.zeros((8, 8, 2), np.uint8)]], ["one"])


def test_save_contact_sheet(tmp_path):
    grey8, rgb8, raw16 = _tiles()
    path = tmp_path / "sub" / "sheet.png"
    sheet = save_contact_sheet(path, [[grey8, rgb8, raw16]], ["a", "b", "c"], ["r"],
                               tile_height=TILE)
    np.testing.assert_array_equal(read_color(path), sheet)

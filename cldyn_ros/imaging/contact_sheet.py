"""Contact sheets: a titled grid of images (e.g. infrared | visible | fused per row)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from .io import write_image
from .thermal import ThermalNormalizer

__all__ = ["make_contact_sheet", "save_contact_sheet"]

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_FONT_SCALE = 0.3


def _to_display(tile: np.ndarray) -> np.ndarray:
    """Convert one tile to HxWx3 ``uint8`` RGB for display."""
    img = np.asarray(tile)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # drop alpha
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"tiles must be HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"tile is empty, shape {img.shape}")

    if img.dtype == np.uint8:
        out = img
    elif img.dtype == np.bool_:
        out = img.astype(np.uint8) * 255
    else:
        finite = img[np.isfinite(img)] if img.dtype.kind == "f" else img
        if img.dtype.kind == "f" and finite.size and finite.min() >= 0 and finite.max() <= 1:
            # Already a [0, 1] image (network output, normalised thermal): keep its scale.
            unit = np.nan_to_num(img.astype(np.float32), nan=0.0)
        else:
            # Raw thermal counts fill only a small part of the 16-bit range: stretch robustly,
            # otherwise the tile would be a flat grey.
            unit = ThermalNormalizer(0.5, 99.5)(img)
        out = (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def _resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h == height:
        return img
    width = max(1, int(round(w * height / h)))
    interpolation = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interpolation)


def _ascii(text: str) -> str:
    # Hershey fonts only cover ASCII; make the substitution explicit rather than garbled.
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))


def _fit_text(text: str, max_width: int, scale: float, thickness: int) -> tuple[str, float]:
    """Shrink the font, then cut the text with '...', until it fits ``max_width`` pixels."""
    while scale > _MIN_FONT_SCALE and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > \
            max_width:
        scale = max(_MIN_FONT_SCALE, scale * 0.9)
    if cv2.getTextSize(text, _FONT, scale, thickness)[0][0] <= max_width:
        return text, scale
    while text and cv2.getTextSize(text + "...", _FONT, scale, thickness)[0][0] > max_width:
        text = text[:-1]
    return (text + "..." if text else ""), scale


def make_contact_sheet(
    rows: Sequence[Sequence[np.ndarray | None]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    tile_height: int = 200,
) -> np.ndarray:
    """Arrange images in a titled grid.

    Args:
        rows: one sequence of tiles per row, each with ``len(column_titles)`` entries. A tile is
            HxW (grey) or HxWx3 (RGB; HxWx1 and HxWx4 are accepted too) of dtype ``uint8``,
            ``uint16`` (stretched between its 0.5 and 99.5 percentiles for display), ``bool`` or
            float (shown as is if within ``[0, 1]``, stretched otherwise). ``None`` leaves the
            cell empty.
        column_titles: one title per column, drawn on a header band.
        row_titles: optional title per row, drawn on a band on the left.
        tile_height: height in pixels every tile is resized to, keeping its aspect ratio.

    Returns:
        The sheet as HxWx3 ``uint8`` RGB. Columns are as wide as their widest tile; narrower
        tiles are centred.
    """
    if tile_height < 8:
        raise ValueError(f"tile_height must be at least 8, got {tile_height}")
    if len(rows) == 0:
        raise ValueError("rows must contain at least one row")
    n_cols = len(column_titles)
    if n_cols == 0:
        raise ValueError("column_titles must not be empty")
    for i, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"row {i} has {len(row)} tiles but there are {n_cols} column titles")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"got {len(row_titles)} row titles for {len(rows)} rows")

    tiles = [[None if t is None else _resize_to_height(_to_display(t), tile_height) for t in row]
             for row in rows]
    col_widths = [
        max((t.shape[1] for row in tiles if (t := row[c]) is not None), default=tile_height)
        for c in range(n_cols)
    ]

    gap = max(2, tile_height // 50)
    pad = max(3, tile_height // 25)
    scale = max(_MIN_FONT_SCALE, tile_height / 400.0)
    thickness = 1 if tile_height < 300 else 2
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    header_h = text_h + baseline + 2 * pad

    row_texts: list[tuple[str, float]] = []
    left_w = 0
    if row_titles is not None:
        max_left = 2 * tile_height  # keep long row titles from dwarfing the images
        row_texts = [_fit_text(_ascii(t), max_left, scale, thickness) for t in row_titles]
        widths = [cv2.getTextSize(t, _FONT, s, thickness)[0][0] for t, s in row_texts]
        left_w = max(widths, default=0) + 2 * pad

    sheet_w = left_w + sum(col_widths) + gap * (n_cols + 1)
    sheet_h = header_h + len(rows) * (tile_height + gap) + gap
    sheet = np.empty((sheet_h, sheet_w, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND

    x_starts = []
    x = left_w + gap
    for c in range(n_cols):
        x_starts.append(x)
        title, s = _fit_text(_ascii(column_titles[c]), col_widths[c] - 2, scale, thickness)
        (tw, _), _ = cv2.getTextSize(title, _FONT, s, thickness)
        cv2.putText(sheet, title, (x + (col_widths[c] - tw) // 2, pad + text_h), _FONT, s, _TEXT,
                    thickness, cv2.LINE_AA)
        x += col_widths[c] + gap

    for r, row in enumerate(tiles):
        y = header_h + r * (tile_height + gap)
        if row_texts:
            title, s = row_texts[r]
            (_, th), _ = cv2.getTextSize(title, _FONT, s, thickness)
            cv2.putText(sheet, title, (pad, y + (tile_height + th) // 2), _FONT, s, _TEXT,
                        thickness, cv2.LINE_AA)
        for c, tile in enumerate(row):
            if tile is None:
                continue
            x0 = x_starts[c] + (col_widths[c] - tile.shape[1]) // 2
            sheet[y:y + tile_height, x0:x0 + tile.shape[1]] = tile
    return sheet


def save_contact_sheet(
    path: str | PathLike[str],
    rows: Sequence[Sequence[np.ndarray | None]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    tile_height: int = 200,
) -> np.ndarray:
    """Build a sheet with :func:`make_contact_sheet` and write it to ``path``.

    Returns:
        The sheet (HxWx3 ``uint8`` RGB) that was written; parent folders are created.
    """
    sheet = make_contact_sheet(rows, column_titles, row_titles, tile_height)
    write_image(Path(path), sheet)
    return sheet

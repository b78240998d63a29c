"""Reading and writing image files, and pairing infrared/visible files.

Conventions at this boundary: colour images are returned and accepted as HxWx3 ``uint8`` in RGB
order (cv2 works in BGR internally), thermal images as HxW ``uint8``/``uint16`` counts. Files are
read as bytes and decoded with ``cv2.imdecode`` so that non-ASCII paths work and so that
truncated files can be detected before the decoder silently pads them with grey.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "PairListing",
    "find_pairs",
    "read_color",
    "read_thermal",
    "write_image",
]

#: Lower-case file extensions recognised as images (reading, writing and pairing).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Formats that can store 16 bits per channel; the others are 8-bit only.
_SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"

PathArg = str | PathLike[str]


class ImageReadError(Exception):
    """An image file could not be read; the message names the file and the problem.

    Attributes:
        path: the offending file.
        reason: what is wrong with it, e.g. ``"file is empty (0 bytes)"``.
    """

    def __init__(self, path: PathArg, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {str(self.path)!r}: {reason}")


def _load_bytes(path: PathArg) -> tuple[Path, bytes]:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return path, data


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first entropy-coded scan of a JPEG, or ``None`` if the header is cut short.

    Walks the marker segments after SOI. Returns ``-1`` for a header this simple walk does not
    understand, leaving the verdict to the decoder.
    """
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xD9:
            return -1
        if i + 4 > n:
            return None
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n:
            return None
        if marker == 0xDA:  # start of scan: compressed data follows the SOS header
            return end
        i = end
    return None


def _check_complete(path: Path, data: bytes) -> None:
    """Reject PNG/JPEG files that were cut short.

    libjpeg only warns about a premature end of file and returns an image whose missing part is
    grey, so such files would otherwise be fused as if they were valid.
    """
    if data.startswith(_JPEG_SIGNATURE):
        scan = _jpeg_scan_start(data)
        if scan is None:
            raise ImageReadError(path, "truncated JPEG (header cut short)")
        # Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
        # FF D9 after the first scan header can only be the end-of-image marker. Bytes appended
        # after it by some cameras are harmless.
        if scan >= 0 and data.find(_JPEG_EOI, scan) < 0:
            raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")
    elif data.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-64:]:
            raise ImageReadError(path, "truncated PNG (no IEND chunk)")


def _decode(path: PathArg, flags: int) -> tuple[Path, np.ndarray]:
    path, data = _load_bytes(path)
    _check_complete(path, data)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if img is None:
        raise ImageReadError(path, "not a supported image or corrupt data (decoding failed)")
    if img.size == 0 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageReadError(path, f"image has zero size (shape {img.shape})")
    return path, img


def read_thermal(path: PathArg) -> np.ndarray:
    """Read a thermal image file, keeping its bit depth.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF).

    Returns:
        HxW ``uint8`` or ``uint16`` array (16-bit PNG/TIFF stay 16-bit raw counts; a ``float32``
        TIFF is returned as ``float32``). A colour file is converted to grey.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or zero-size file, or an unsupported
            pixel type.
    """
    # IMREAD_UNCHANGED keeps 16 bits and, like read_color, ignores any EXIF orientation: the
    # pixel grids of a pair must stay as stored for registration.
    path, img = _decode(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        elif channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise ImageReadError(path, f"unsupported number of channels: {channels}")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageReadError(path, f"unsupported pixel type {img.dtype} for a thermal image")
    return np.ascontiguousarray(img)


def read_color(path: PathArg) -> np.ndarray:
    """Read a colour (visible) image file.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF).

    Returns:
        HxWx3 ``uint8`` array in RGB order. A grey file gives three equal channels, an alpha
        channel is dropped and 16-bit files are reduced to 8 bits.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or zero-size file.
    """
    # IMREAD_COLOR already converts grey/alpha/16-bit to 8-bit BGR; the EXIF orientation is
    # ignored so that the visible image stays on the same pixel grid as its thermal partner.
    _, img = _decode(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path: PathArg, img: np.ndarray) -> Path:
    """Write an RGB or grey image, creating parent folders as needed.

    Args:
        path: destination; the extension (one of :data:`IMAGE_EXTENSIONS`) picks the format.
        img: HxW (grey), HxWx1 or HxWx3 (RGB) array, ``uint8`` or ``uint16``. 16-bit images
            need PNG or TIFF.

    Returns:
        The path written.

    Raises:
        ValueError: unsupported extension, shape or dtype, or 16-bit data for an 8-bit format.
        OSError: encoding or writing failed.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"cannot write {str(path)!r}: unsupported extension {path.suffix!r}, "
            f"use one of {', '.join(IMAGE_EXTENSIONS)}"
        )
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write {str(path)!r}: dtype must be uint8 or uint16, "
                         f"got {img.dtype}")
    if img.dtype == np.uint16 and ext not in _SIXTEEN_BIT_EXTENSIONS:
        raise ValueError(f"cannot write {str(path)!r}: 16-bit images need one of "
                         f"{', '.join(_SIXTEEN_BIT_EXTENSIONS)}, not {ext}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    elif img.ndim != 2:
        raise ValueError(f"cannot write {str(path)!r}: expected HxW or HxWx3, got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"cannot write {str(path)!r}: image is empty, shape {img.shape}")
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    if not ok:
        raise OSError(f"cannot write {str(path)!r}: encoding as {ext} failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


@dataclass
class PairListing:
    """Result of :func:`find_pairs`.

    Attributes:
        pairs: ``(name, ir_file, vi_file)`` tuples sorted by name.
        ir_only: infrared files without a visible partner, sorted.
        vi_only: visible files without an infrared partner, sorted.
    """

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (name, ir_file, vi_file)
    ir_only: list[Path] = field(default_factory=list)
    vi_only: list[Path] = field(default_factory=list)


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        # Hidden files include macOS "._x.png" resource forks, which are not images.
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if not entry.is_file():
            continue
        if entry.stem in found:
            raise ValueError(
                f"ambiguous images in {str(folder)!r}: {found[entry.stem].name!r} and "
                f"{entry.name!r} have the same name without extension"
            )
        found[entry.stem] = entry
    return found


def find_pairs(ir: PathArg, vi: PathArg) -> PairListing:
    """Pair infrared and visible image files.

    Args:
        ir: an infrared image file, or a folder of them.
        vi: a visible image file, or a folder of them (same kind as ``ir``).

    Returns:
        For two files, one pair named after the visible file's stem. For two folders, the image
        files (by :data:`IMAGE_EXTENSIONS`, not recursive, hidden files skipped) matched by stem,
        so ``ir/a.png`` pairs with ``vi/a.jpg``; unmatched files are listed separately.

    Raises:
        ValueError: a path does not exist, one path is a file and the other a folder, or a
            folder holds two images with the same stem.
    """
    ir, vi = Path(ir), Path(vi)
    for label, p in (("infrared", ir), ("visible", vi)):
        if not p.exists():
            raise ValueError(f"{label} path {str(p)!r} does not exist")
    if ir.is_file() and vi.is_file():
        return PairListing(pairs=[(vi.stem, ir, vi)])
    if ir.is_dir() and vi.is_dir():
        ir_files = _images_by_stem(ir)
        vi_files = _images_by_stem(vi)
        common = sorted(ir_files.keys() & vi_files.keys())
        return PairListing(
            pairs=[(stem, ir_files[stem], vi_files[stem]) for stem in common],
            ir_only=sorted(p for s, p in ir_files.items() if s not in vi_files),
            vi_only=sorted(p for s, p in vi_files.items() if s not in ir_files),
        )
    kind = {True: "a folder", False: "a file"}
    raise ValueError(
        "infrared and visible paths must both be files or both be folders, got "
        f"{kind[ir.is_dir()]} ({str(ir)!r}) and {kind[vi.is_dir()]} ({str(vi)!r})"
    )

"""Image decoding that keeps the data's range: 8/16-bit and float, grayscale to multi-band, with alpha policies.

``ImageReader`` turns a file into the float32 ``[C, H, W]`` tensor the data sets return:

1. decode at full precision: TIFF files with ``tifffile`` (every page, every sample: a 2-page TIFF of 2-band
   pages gives 4 channels; reduced-resolution pages are skipped), everything else with PIL (16-bit PNG ``I;16``,
   float ``F``, palette, gray + alpha, ...). An LZW/PackBits TIFF needs the ``imagecodecs`` package for
   ``tifffile``; without it a single-page TIFF that PIL reads losslessly is read with PIL, anything else raises
   one line saying to install ``imagecodecs``;
2. normalise the intensities by ``data.intensity`` (:mod:`se_plugins.data.intensity`; ``percentile`` statistics
   come from the pixels that are not fully transparent);
3. apply ``data.alpha`` to an alpha channel (PNG/TIFF alpha, palette transparency): ``blend_black`` (default),
   ``blend_white``, ``drop`` (the stored colours, whatever lies under transparent pixels) or ``keep`` (alpha as
   the last channel; an image without alpha gets an opaque one);
4. match ``data.channels``: equal counts pass, a 1-channel image is repeated to 3 channels (pretrained RGB
   weights), a 3-channel image becomes luminance (``0.299 R + 0.587 G + 0.114 B``) for 1 channel; any other
   mismatch raises ``DataError`` naming the file and both counts.

Example:
    >>> reader = ImageReader(channels=4, intensity=IntensityRule("range", value_range=(0, 4095)))
    >>> reader("tiles/001.tif").shape      # torch.Size([4, H, W]), float32 in [0, 1]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from se_plugins.data.intensity import IntensityRule, normalize_intensity, scale_alpha
from se_plugins.errors import DataError

ALPHA_POLICIES = ("blend_black", "blend_white", "drop", "keep")
"""The values of ``data.alpha``; the first is the default."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LUMA = (0.299, 0.587, 0.114)
_PIL_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "La": 8, "PA": 8, "RGB": 8, "RGBA": 8, "RGBa": 8, "RGBX": 8}
_PIL_BITS.update({"CMYK": 8, "YCbCr": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32})
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, KeyError, Image.DecompressionBombError)


@dataclass
class DecodedImage:
    """An image as decoded, before normalisation.

    Attributes:
        pixels: Colour/band values ``[C, H, W]`` in the file's dtype.
        alpha: Alpha ``[H, W]`` in the file's dtype, or None.
        premultiplied: The colours are premultiplied by alpha (TIFF associated alpha, PIL ``RGBa``/``La``).
        bits: Significant bits when the dtype is wider than the data (PIL mode ``I`` of a 16-bit file), else None.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    premultiplied: bool = False
    bits: int | None = None


@dataclass(frozen=True)
class ImageReader:
    """Decode an image file into a float32 ``tv_tensors.Image`` ``[channels, H, W]`` in [0, 1].

    Picklable (DataLoader workers). See the module docstring for the steps.

    Args:
        channels: Channels the model takes (``data.channels``).
        alpha: ``data.alpha``: ``blend_black`` | ``blend_white`` | ``drop`` | ``keep``.
        intensity: ``data.intensity`` and its parameters.
    """

    channels: int = 3
    alpha: str = "blend_black"
    intensity: IntensityRule = field(default_factory=IntensityRule)

    def __post_init__(self) -> None:
        if self.alpha not in ALPHA_POLICIES:
            raise ValueError(f"alpha policy {self.alpha!r} is not one of {', '.join(ALPHA_POLICIES)}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")

    @classmethod
    def from_config(cls, data_cfg: Any) -> ImageReader:
        """The reader a config's ``data`` section describes (``channels``, ``alpha``, ``intensity*``)."""
        value_range = data_cfg.intensity_range
        return cls(
            channels=int(data_cfg.channels),
            alpha=str(data_cfg.alpha),
            intensity=IntensityRule(
                str(data_cfg.intensity),
                value_range=None if value_range is None else (float(value_range[0]), float(value_range[1])),
                percentiles=(float(data_cfg.intensity_percentiles[0]), float(data_cfg.intensity_percentiles[1])),
            ),
        )

    def describe(self) -> str:
        """One line for the start-of-run log: channels, alpha policy and intensity rule."""
        return f"images: {self.channels} channels, alpha {self.alpha}, {self.intensity.describe()}"

    def __call__(self, path: str | os.PathLike) -> tv_tensors.Image:
        decoded = decode_image(path)
        opaque = None if decoded.alpha is None else decoded.alpha > 0
        pixels = normalize_intensity(decoded.pixels, self.intensity, path, bits=decoded.bits, valid=opaque)
        pixels = self._apply_alpha(pixels, decoded, path)
        pixels = _match_channels(pixels, self.channels, path)
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)))

    def _apply_alpha(self, pixels: np.ndarray, decoded: DecodedImage, path: str | os.PathLike) -> np.ndarray:
        if decoded.alpha is None:
            if self.alpha == "keep" and pixels.shape[0] + 1 == self.channels:
                return np.concatenate([pixels, np.ones_like(pixels[:1])])  # no alpha = opaque
            return pixels
        alpha = scale_alpha(decoded.alpha, path)[None]
        if self.alpha == "keep":
            colours = pixels if not decoded.premultiplied else _unpremultiply(pixels, alpha)
            return np.concatenate([colours, alpha])
        if self.alpha == "drop":
            return pixels if not decoded.premultiplied else _unpremultiply(pixels, alpha)
        background = 1.0 if self.alpha == "blend_white" else 0.0
        covered = pixels if decoded.premultiplied else pixels * alpha
        return (covered + (1.0 - alpha) * np.float32(background)).astype(np.float32)


def decode_image(path: str | os.PathLike) -> DecodedImage:
    """Decode ``path`` at full precision (TIFF: ``tifffile``; other formats: PIL). Raises DataError naming it."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image (file not found)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    if magic in _TIFF_MAGIC:
        return _decode_tiff(path)
    return _decode_pil(path)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` from the image header without decoding the pixels (TIFF: its first full page)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = _data_pages(tif)[0]
                return _page_hw(page)
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image (file not found)") from None
    except (*_DECODE_ERRORS, IndexError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    return height, width


# ------------------------------------------------------------------------------------------------ PIL


def _decode_pil(path: str | os.PathLike) -> DecodedImage:
    try:
        with Image.open(path) as im:
            return _from_pil(im)
    except _DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


def _from_pil(im: Image.Image) -> DecodedImage:
    mode = im.mode
    rawmodes = [str(t.args if hasattr(t, "args") else t[3]) for t in (getattr(im, "tile", None) or [])]
    if mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
        raise DataError(
            f"{im.filename}: a 16-bit {mode} image, of which PIL decodes only 8 bits; save it as a 16-bit TIFF "
            "(e.g. tifffile.imwrite) to keep its precision"
        )
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F") or mode.startswith("I;16"):
        pass
    else:
        im = im.convert("RGB")
    mode = im.mode
    array = np.array(im)
    if mode.startswith("I;16"):
        array = array.astype(np.uint16)
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    if mode in ("LA", "La", "RGBA", "RGBa"):
        return DecodedImage(array[:-1], alpha=array[-1], premultiplied=mode in ("La", "RGBa"))
    return DecodedImage(array, bits=16 if mode == "I" else None)


# ------------------------------------------------------------------------------------------------ TIFF


def _decode_tiff(path: str | os.PathLike) -> DecodedImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = _data_pages(tif)
            if not pages:
                raise DataError(f"{path}: cannot read TIFF (no image pages)")
            arrays, alpha, premultiplied = [], None, False
            size = _page_hw(pages[0])
            for index, page in enumerate(pages):
                if _page_hw(page) != size:
                    raise DataError(
                        f"{path}: TIFF page {index} is {_page_hw(page)[1]}x{_page_hw(page)[0]} but page 0 is "
                        f"{size[1]}x{size[0]}; pages become channels and must have one size"
                    )
                chw = _page_chw(page, page.asarray())
                extra = tuple(int(e) for e in (page.extrasamples or ()))
                if len(pages) == 1 and extra and extra[-1] in (1, 2) and chw.shape[0] > 1:  # 1 assoc., 2 unassoc.
                    alpha, premultiplied, chw = chw[-1], extra[-1] == 1, chw[:-1]
                arrays.append(chw)
    except DataError:
        raise
    except (KeyError, ValueError, ModuleNotFoundError) as e:
        if "imagecodecs" in str(e) or isinstance(e, ModuleNotFoundError):
            return _tiff_with_pil(path, e)
        raise DataError(f"{path}: cannot read TIFF ({e})") from e
    except (OSError, tifffile.TiffFileError, IndexError) as e:
        raise DataError(f"{path}: cannot read TIFF ({e})") from e
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise DataError(f"{path}: TIFF pages have different pixel types ({', '.join(sorted(map(str, dtypes)))})")
    return DecodedImage(np.concatenate(arrays), alpha=alpha, premultiplied=premultiplied)


def _data_pages(tif: Any) -> list[Any]:
    """Full-resolution pages (thumbnails and pyramid levels, ``is_reduced``, are not data)."""
    return [p for p in tif.pages if not getattr(p, "is_reduced", False)]


def _page_hw(page: Any) -> tuple[int, int]:
    return int(page.imagelength), int(page.imagewidth)


def _page_chw(page: Any, array: np.ndarray) -> np.ndarray:
    """A page array with axes like ``YX``, ``YXS``, ``SYX`` as ``[C, H, W]`` (every non-spatial axis a channel)."""
    axes = str(page.axes)
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
        array = array.reshape(-1, *_page_hw(page))
        return array
    spatial = [axes.index("Y"), axes.index("X")]
    others = [i for i in range(array.ndim) if i not in spatial]
    return np.transpose(array, [*others, *spatial]).reshape(-1, array.shape[spatial[0]], array.shape[spatial[1]])


def _tiff_with_pil(path: str | os.PathLike, cause: BaseException) -> DecodedImage:
    """A TIFF ``tifffile`` cannot decompress without ``imagecodecs``: PIL, when it reads it losslessly."""
    hint = f"{path}: this TIFF's compression needs the imagecodecs package (pip install imagecodecs)"
    try:
        with Image.open(path) as im:
            bits = im.tag_v2.get(258, (8,)) if hasattr(im, "tag_v2") else (8,)
            bits = tuple(bits) if isinstance(bits, tuple | list) else (bits,)
            if getattr(im, "n_frames", 1) > 1 or max(bits) > _PIL_BITS.get(im.mode, 0):
                raise DataError(f"{hint}; PIL would lose pages or bits of it")
            return _from_pil(im)
    except DataError:
        raise
    except _DECODE_ERRORS as e:
        raise DataError(f"{hint} ({cause}; PIL: {e})") from e


def _unpremultiply(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha > 0, pixels / np.maximum(alpha, 1e-12), 0.0).clip(0.0, 1.0).astype(np.float32)


def _match_channels(pixels: np.ndarray, channels: int, path: str | os.PathLike) -> np.ndarray:
    have = pixels.shape[0]
    if have == channels:
        return pixels
    if have == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=0)
    if have == 3 and channels == 1:
        luma = np.asarray(_LUMA, dtype=np.float32).reshape(3, 1, 1)
        return (pixels * luma).sum(axis=0, keepdims=True, dtype=np.float32)
    raise DataError(
        f"{path}: image has {have} channels but data.channels is {channels}"
        + (" (data.alpha keep adds the alpha channel)" if have + 1 == channels else "")
    )

"""Image decoding beyond 8-bit RGB: 16-bit/float TIFFs, multi-page/multi-band TIFFs, alpha policies, intensity rules.

Every fixture is a real file written by PIL or tifffile; expected values are computed from the raw arrays with numpy.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from se_plugins.data._io import load_rgb_image, read_image_size
from se_plugins.data.decode import ImageReader
from se_plugins.data.intensity import IntensityRule, reset_clip_count
from se_plugins.errors import DataError

HAS_IMAGECODECS = importlib.util.find_spec("imagecodecs") is not None


def raw_12bit(height: int = 24, width: int = 40) -> np.ndarray:
    """uint16 values spanning exactly 0..4095 (a 12-bit camera), every value well above 255 somewhere."""
    values = (np.arange(height * width, dtype=np.int64) * 4095) // (height * width - 1)
    return values.reshape(height, width).astype(np.uint16)


def no_warnings(reader: ImageReader, path: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return reader(path)


@pytest.fixture(autouse=True)
def fresh_clip_count():
    """Clip warnings count files per process; every test starts from zero."""
    reset_clip_count()
    yield
    reset_clip_count()


@pytest.fixture
def tiff12(tmp_path) -> tuple[Path, np.ndarray]:
    raw = raw_12bit()
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, raw)
    return path, raw


# ------------------------------------------------------------------------------------------------ intensity


def test_16bit_tiff_auto_is_divided_by_65535_not_clipped(tiff12):
    path, raw = tiff12
    image = no_warnings(ImageReader(channels=1), path)
    assert image.dtype == torch.float32 and image.shape == (1, *raw.shape)
    expected = raw.astype(np.float32) / np.float32(65535)
    assert np.array_equal(image[0].numpy(), expected)
    assert len(torch.unique(image)) == len(np.unique(raw))  # every raw level survives (nothing clipped)


def test_16bit_tiff_range_and_percentile(tiff12):
    path, raw = tiff12
    ranged = no_warnings(ImageReader(1, intensity=IntensityRule("range", value_range=(0.0, 4095.0))), path)
    assert np.array_equal(ranged[0].numpy(), (raw.astype(np.float64) / 4095.0).astype(np.float32))
    assert ranged.min().item() == 0.0 and ranged.max().item() == 1.0
    full = no_warnings(ImageReader(1, intensity=IntensityRule("percentile", percentiles=(0.0, 100.0))), path)
    assert np.array_equal(full.numpy(), ranged.numpy())  # percentiles 0/100 of 0..4095 are 0 and 4095
    pct = no_warnings(ImageReader(1, intensity=IntensityRule("percentile", percentiles=(1.0, 99.8))), path)
    lo, hi = np.percentile(raw.astype(np.float64), [1.0, 99.8])
    expected = np.clip((raw.astype(np.float64) - lo) / (hi - lo), 0, 1).astype(np.float32)
    assert np.array_equal(pct[0].numpy(), expected)


def test_16bit_png_reads_like_the_tiff(tmp_path, tiff12):
    path, raw = tiff12
    png = tmp_path / "cells.png"
    Image.fromarray(raw).save(png)
    with Image.open(png) as im:
        assert im.mode == "I;16"  # PIL's 16-bit mode, which convert("RGB") used to clip at 255
    assert torch.equal(ImageReader(1)(png), ImageReader(1)(path))
    # the default 3-channel reader repeats the gray channel
    rgb = load_rgb_image(png)
    assert rgb.shape == (3, *raw.shape) and torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[:1], ImageReader(1)(png))


def test_values_outside_the_range_are_clipped_with_a_counted_warning(tiff12):
    path, raw = tiff12
    reader = ImageReader(1, intensity=IntensityRule("range", value_range=(0.0, 2000.0)))
    with pytest.warns(UserWarning) as record:
        image = reader(path)
    above = int((raw > 2000).sum())
    message = str(record[0].message)
    assert str(path) in message and f"{above} of {raw.size} values" in message and "data.intensity_range" in message
    assert image.max().item() == 1.0 and int((image == 1.0).sum()) == above + int((raw == 2000).sum())


def test_clip_warnings_report_the_first_files_then_every_100th(tmp_path):
    reader = ImageReader(1)  # auto: float values are taken as they are, so 2.0 is clipped
    paths = []
    for i in range(201):
        paths.append(tmp_path / f"f{i:03d}.tif")
        tifffile.imwrite(paths[-1], np.array([[0.5, 2.0]], np.float32))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for path in paths + paths[:3]:  # a second epoch over some files reports nothing new
            assert reader(path).max().item() == 1.0  # always clipped, reported or not
    reported = [str(r.message) for r in record]
    assert [m.split(":")[0] for m in reported] == [str(paths[i]) for i in (0, 1, 2, 3, 4, 99, 199)]
    assert reported[0].endswith("(1 file with clipped values so far in this process)")
    assert reported[-1].endswith("(200 files with clipped values so far in this process)")
    assert "1 of 2 values (50 %)" in reported[-1]


def test_float_tiff_is_taken_as_is(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((2, 16, 20), dtype=np.float32)
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, values, photometric="minisblack", planarconfig="separate")
    image = no_warnings(ImageReader(2), path)
    assert np.array_equal(image.numpy(), values)  # not quantised to 0 and 1/255
    assert len(torch.unique(image)) == values.size


def test_float_tiff_out_of_range_and_nan_are_counted(tmp_path):
    values = np.linspace(-0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, values)
    with pytest.warns(UserWarning) as record:
        image = ImageReader(1)(path)
    messages = " | ".join(str(r.message) for r in record)
    finite = values[np.isfinite(values)]
    below, above = int((finite < 0).sum()), int((finite > 1).sum())
    assert f"{path}: 1 of 64 values are NaN or infinite" in messages
    assert f"({below} below, {above} above)" in messages
    assert image[0, 0, 0].item() == 0.0 and 0.0 <= image.min().item() and image.max().item() == 1.0
    inside = np.isfinite(values) & (values >= 0) & (values <= 1)
    assert np.array_equal(image[0].numpy()[inside], values[inside])


def test_32bit_integers_need_an_explicit_rule(tmp_path):
    path = tmp_path / "counts.tif"
    tifffile.imwrite(path, np.arange(64, dtype=np.int32).reshape(8, 8) * 1000)
    with pytest.raises(DataError, match=r"counts\.tif: 32-bit integer pixels .* data\.intensity"):
        ImageReader(1)(path)
    image = ImageReader(1, intensity=IntensityRule("range", value_range=(0.0, 63000.0)))(path)
    assert image.max().item() == 1.0


def test_8bit_images_decode_as_before(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32).div_(255.0)  # the former decoder
    assert torch.equal(load_rgb_image(path), expected)
    luma = ImageReader(1)(path)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    torch.testing.assert_close(luma[0], (expected * weights).sum(0), rtol=0, atol=2e-7)  # float32 sum of 3 terms


# ------------------------------------------------------------------------------------------------ channels


def test_two_page_tiff_of_two_band_pages_gives_four_channels(tmp_path):
    rng = np.random.default_rng(2)
    pages = rng.integers(0, 65536, (2, 10, 12, 2), dtype=np.uint16)  # pages x H x W x samples
    path = tmp_path / "bands.tif"
    tifffile.imwrite(path, pages, photometric="minisblack", planarconfig="contig")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 2
    image = ImageReader(4)(path)
    expected = np.stack([pages[0, ..., 0], pages[0, ..., 1], pages[1, ..., 0], pages[1, ..., 1]])
    assert np.array_equal(image.numpy(), expected.astype(np.float32) / np.float32(65535))
    assert read_image_size(path) == (10, 12)
    with pytest.raises(DataError, match=r"bands\.tif: image has 4 channels but data\.channels is 3"):
        load_rgb_image(path)


def test_single_page_four_band_tiff(tmp_path):
    rng = np.random.default_rng(3)
    bands = rng.integers(0, 4096, (4, 9, 7), dtype=np.uint16)
    path = tmp_path / "rgbn.tif"
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    reader = ImageReader(4, intensity=IntensityRule("range", value_range=(0.0, 4095.0)))
    assert np.array_equal(reader(path).numpy(), (bands.astype(np.float64) / 4095).astype(np.float32))


def test_pages_of_different_sizes_are_an_error(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((8, 8), np.uint16))
        tif.write(np.zeros((4, 8), np.uint16))
    with pytest.raises(DataError, match=r"mixed\.tif: TIFF page 1 is 8x4 but page 0 is 8x8"):
        ImageReader(2)(path)


def test_lzw_tiff_without_imagecodecs_falls_back_to_pil(tmp_path, tiff12):
    _, raw = tiff12
    path = tmp_path / "lzw.tif"
    Image.fromarray(raw).save(path, compression="tiff_lzw")
    assert np.array_equal(ImageReader(1)(path)[0].numpy(), raw.astype(np.float32) / np.float32(65535))


@pytest.mark.skipif(HAS_IMAGECODECS, reason="imagecodecs installed: tifffile decodes LZW itself")
def test_multipage_lzw_tiff_without_imagecodecs_names_the_package(tmp_path):
    path = tmp_path / "lzw2.tif"
    frames = [Image.fromarray(np.full((8, 8), v, np.uint16)) for v in (1, 2)]
    frames[0].save(path, compression="tiff_lzw", save_all=True, append_images=frames[1:])
    # PIL would read one page at a time: the fallback refuses rather than return a part of the file
    with pytest.raises(DataError, match=r"lzw2\.tif: this TIFF's compression needs the imagecodecs package"):
        ImageReader(2)(path)


# ------------------------------------------------------------------------------------------------ alpha


@pytest.fixture
def rgba_png(tmp_path) -> tuple[Path, np.ndarray]:
    """Left half opaque, right half transparent (colour (200, 100, 50) stored under it), one pixel alpha 128."""
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :4, 3] = 255
    rgba[0, 0, 3] = 128
    path = tmp_path / "half.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path, rgba


@pytest.mark.parametrize("policy", ["blend_black", "blend_white", "drop", "keep"])
def test_alpha_policies(rgba_png, policy):
    path, rgba = rgba_png
    colour = rgba[..., :3].astype(np.float32) / np.float32(255)
    alpha = rgba[..., 3].astype(np.float32) / np.float32(255)
    image = ImageReader(4 if policy == "keep" else 3, alpha=policy)(path).numpy().transpose(1, 2, 0)
    opaque = alpha == 1
    assert np.array_equal(image[opaque][:, :3], colour[opaque])  # opaque pixels never change
    transparent = alpha == 0
    if policy == "blend_black":
        assert (image[transparent] == 0).all()
    elif policy == "blend_white":
        assert (image[transparent] == 1).all()
    else:
        assert np.array_equal(image[transparent][:, :3], colour[transparent])
    if policy == "keep":
        assert image.shape[-1] == 4 and np.array_equal(image[..., 3], alpha)
    else:
        background = {"blend_black": 0.0, "blend_white": 1.0}.get(policy)
        half = colour[0, 0] if background is None else colour[0, 0] * alpha[0, 0] + (1 - alpha[0, 0]) * background
        np.testing.assert_allclose(image[0, 0], half, rtol=0, atol=1e-7)


def test_default_alpha_is_blend_black_and_keep_adds_opaque_alpha_to_rgb(tmp_path, rgba_png):
    path, _ = rgba_png
    assert torch.equal(load_rgb_image(path), ImageReader(3, alpha="blend_black")(path))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(rgb)
    kept = ImageReader(4, alpha="keep")(rgb)
    assert kept.shape == (4, 4, 4) and (kept[3] == 1).all()


def test_reader_pickles_for_dataloader_workers(tiff12):
    path, _ = tiff12
    reader = ImageReader(1, alpha="keep", intensity=IntensityRule("percentile", percentiles=(2.0, 98.0)))
    clone = pickle.loads(pickle.dumps(reader))
    assert clone == reader and torch.equal(clone(path), reader(path))
    assert "alpha keep" in reader.describe() and "2th..98th percentiles" in reader.describe()


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.tif: cannot read image \(file not found\)"):
        ImageReader()(tmp_path / "nothere.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=r"bad\.tif: cannot read TIFF"):
        ImageReader()(bad)


def test_16bit_rgb_png_is_an_error_not_a_silent_8bit_image(tmp_path):
    """PIL decodes 16-bit RGB PNGs to 8 bits; the reader refuses them instead of losing the precision."""
    import struct
    import zlib

    rgb = np.random.default_rng(4).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0)  # width, height, 16 bits, colour type 2 (RGB)
    path = tmp_path / "rgb16.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    with Image.open(path) as im:
        assert im.mode == "RGB"  # what PIL makes of it
    with pytest.raises(DataError, match=r"rgb16\.png: a 16-bit RGB image, of which PIL decodes only 8 bits"):
        ImageReader()(path)


def test_percentiles_ignore_fully_transparent_pixels(tmp_path):
    """A 16-bit RGBA TIFF whose transparent half stores 65535: the percentiles come from the visible half only."""
    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[:, :4] = np.arange(32, dtype=np.uint16).reshape(8, 4, 1) * 100  # visible: 0..3100
    rgb[:, 4:] = 65535  # whatever the writer left under alpha 0
    alpha = np.zeros((8, 8, 1), np.uint16)
    alpha[:, :4] = 65535
    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, np.concatenate([rgb, alpha], axis=-1), photometric="rgb", extrasamples=["unassalpha"])
    rule = IntensityRule("percentile", percentiles=(0.0, 100.0))
    image = no_warnings(ImageReader(3, alpha="drop", intensity=rule), path)
    visible = rgb[:, :4, 0].astype(np.float64)
    assert np.array_equal(image[0, :, :4].numpy(), (visible / visible.max()).astype(np.float32))
    assert (image[:, :, 4:] == 1).all()  # saturated, and blended away under the default policy:
    assert (ImageReader(3, intensity=rule)(path)[:, :, 4:] == 0).all()

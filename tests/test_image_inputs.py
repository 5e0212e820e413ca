"""Images are decoded as the user meant (orientation, bit depth, alpha) or refused with a clear error."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pdsn.model.alignment import TEMPLATE_112X96
from pdsn.model.sample_faces import seeded_faces
from pdsn.runtime import ImageTooLargeError, Recognizer
from pdsn.runtime.preprocess import align_face, decode_image, load_image


def _picture(height: int = 40, width: int = 60) -> np.ndarray:
    """A smooth, asymmetric uint8 RGB picture (survives JPEG; any rotation or flip changes it)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), (xs + 2 * ys) % 256], axis=-1).astype(np.uint8)


def _noise(height: int = 40, width: int = 60) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_48_bit(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow reads these but cannot write them."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb16.shape
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _to_sixteen_bits(eight: np.ndarray) -> np.ndarray:
    """v * 257 plus noise below half an 8-bit level: correct scaling gives back v exactly."""
    noise = np.random.default_rng(0).integers(-120, 121, eight.shape)
    return np.clip(eight.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def _within_one_level(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    grey = _picture()[:, :, 0]
    path = tmp_path / "grey16.png"
    Image.fromarray(_to_sixteen_bits(grey)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    _within_one_level(load_image(path), np.repeat(grey[:, :, None], 3, axis=2))


def test_sixteen_bit_rgb_png(tmp_path):
    picture = _picture()
    path = tmp_path / "rgb48.png"
    path.write_bytes(_png_48_bit(_to_sixteen_bits(picture)))
    _within_one_level(load_image(path), picture)


def test_thirty_two_bit_integers_read_as_sixteen_bit_or_refused():
    grey = _picture()[:, :, 2]
    wide = Image.fromarray(_to_sixteen_bits(grey).astype(np.int32))
    assert wide.mode == "I"
    _within_one_level(decode_image(_encode(wide, "TIFF")), np.repeat(grey[:, :, None], 3, axis=2))
    negative = Image.fromarray(np.full((4, 4), -5, np.int32))
    with pytest.raises(ValueError, match=r"32-bit integer pixels spanning \[-5, -5\]; expected 16-bit values"):
        decode_image(_encode(negative, "TIFF"))


def test_float_tiff_in_unit_range(tmp_path):
    grey = _picture()[:, :, 1]
    path = tmp_path / "float.tiff"
    Image.fromarray(grey.astype(np.float32) / 255.0).save(path)
    with Image.open(path) as image:
        assert image.mode == "F"
    _within_one_level(load_image(path), np.repeat(grey[:, :, None], 3, axis=2))


def test_float_tiff_outside_unit_range_refused(tmp_path):
    path = tmp_path / "float255.tiff"
    Image.fromarray(_picture()[:, :, 0].astype(np.float32)).save(path)
    with pytest.raises(ValueError, match=r"float255\.tiff.*float pixels spanning \[0, 255\]; expected \[0, 1\]"):
        load_image(path)
    with pytest.raises(ValueError, match="NaN or infinite float pixels"):
        decode_image(_encode(Image.fromarray(np.full((4, 4), np.nan, np.float32)), "TIFF"))


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_jpeg_exif_orientation_is_applied(tmp_path, orientation):
    upright = _picture()
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / f"oriented{orientation}.jpg"
    Image.fromarray(upright).transpose(stored[orientation]).save(path, exif=exif, quality=95)
    decoded = load_image(path)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 4


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (200, 10, 50, 255)  # opaque
    rgba[0, 1] = (200, 10, 50, 0)  # transparent
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    decoded = decode_image(_encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(decoded[0, :2], [[200, 10, 50], [255, 255, 255]])
    np.testing.assert_allclose(decoded[0, 2], [127] * 3, atol=1)
    la = Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8))
    assert la.mode == "LA"
    np.testing.assert_array_equal(decode_image(_encode(la, "PNG"))[0], [[40, 40, 40], [255, 255, 255]])


def test_palette_with_transparency_and_cmyk_convert():
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 0, 0, 0])
    palette.putpixel((1, 0), 1)
    np.testing.assert_array_equal(
        decode_image(_encode(palette, "PNG", transparency=1))[0], [[10, 20, 30], [255, 255, 255]]
    )
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    np.testing.assert_array_equal(decode_image(_encode(cmyk, "TIFF"))[0], [[255, 255, 255], [0, 255, 255]])
    bilevel = Image.new("1", (2, 1), 1)
    np.testing.assert_array_equal(decode_image(_encode(bilevel, "PNG"))[0], [[255, 255, 255]] * 2)


def test_unsupported_mode_refused():
    with pytest.raises(ValueError, match=r"image bytes has Pillow mode 'LAB', which is not supported.*Convert it"):
        decode_image(_encode(Image.new("LAB", (4, 4)), "TIFF"))


def test_decompression_bomb_is_our_error_and_warns_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (100, 50)).save(bomb)  # 5000 pixels: past Pillow's error threshold (2 x 1000)
    warning_sized = _encode(Image.new("L", (100, 15)), "PNG")  # 1500 pixels: Pillow would only warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*5000 pixels.*limit is 40,000,000"):
            load_image(bomb)
        with pytest.raises(
            ImageTooLargeError, match=r"image bytes is 100x15 \(WxH\) = 1,500 pixels, over the limit of 1,000"
        ):
            decode_image(warning_sized, max_pixels=1000)
        assert decode_image(warning_sized).shape == (15, 100, 3)
    assert caught == []


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    data = path.read_bytes()
    truncated = data[: len(data) // 2]  # header intact, pixels missing: refused for size, not for damage
    with pytest.raises(ValueError, match=r"image bytes is 300x200 \(WxH\) = 60,000 pixels, over the limit of 10,000"):
        decode_image(truncated, max_pixels=10_000)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_image(path, max_pixels=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"image bytes: empty"),
        (b"not an image at all" * 5, r"image bytes is not an image Pillow can identify; expected one of PNG, JPEG"),
        (_encode(Image.fromarray(_noise()), "PNG")[:3000], r"could not be decoded .*truncated"),
        (_encode(Image.fromarray(_noise()), "JPEG")[:1500], r"could not be decoded .*truncated"),
        (_encode(Image.fromarray(_noise()), "JPEG")[:200], r"image bytes could not be read as an image"),
        (_encode(Image.new("RGB", (4, 4)), "ICO"), r"image bytes is in ICO format; expected one of PNG"),
    ],
)
def test_damaged_or_unexpected_bytes_refused(data, message):
    with pytest.raises(ValueError, match=message):
        decode_image(data)


def test_load_and_decode_agree_and_name_the_file(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(_picture()).save(path)
    np.testing.assert_array_equal(load_image(path), decode_image(path.read_bytes()))
    np.testing.assert_array_equal(load_image(path), _picture())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"image '.*broken\.png' is not an image"):
        load_image(broken)
    with pytest.raises(TypeError, match="expected bytes"):
        decode_image(str(path))


def _face_photo() -> tuple[np.ndarray, np.ndarray]:
    """A seeded face pasted into a larger picture, and its landmarks there."""
    canvas = np.full((240, 200, 3), 90, np.uint8)
    canvas[60:172, 50:146] = seeded_faces(1, seed=3)[0]
    return canvas, TEMPLATE_112X96 + np.array([50.0, 60.0])


def test_face_photo_through_a_file_aligns(tmp_path):
    canvas, landmarks = _face_photo()
    path = tmp_path / "photo.png"
    Image.fromarray(canvas).save(path)
    _within_one_level(align_face(load_image(path), landmarks), seeded_faces(1, seed=3)[0])  # Pillow's rounding


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (TEMPLATE_112X96 + [5000.0, 40.0], r"left eye at \(5030\.3, 91\.7\).*outside the 200x240 \(WxH\) image"),
        (TEMPLATE_112X96 * 20.0, r"outside the 200x240 \(WxH\) image"),
        (TEMPLATE_112X96 * 0.05 + [100.0, 100.0], r"eyes are 1\.8 px apart, at least 8\.8 px expected"),
        (TEMPLATE_112X96 * [-1.0, 1.0] + [150.0, 60.0], r"mirrored: left and right are swapped"),
        (TEMPLATE_112X96 - [25.0, 46.0], r"put \d+% of the aligned crop outside the 200x240"),
    ],
)
def test_bad_landmarks_refused_by_align_face(landmarks, message):
    canvas, _ = _face_photo()
    with pytest.raises(ValueError, match=message):
        align_face(canvas, landmarks, argument="landmarks[0]")


def test_float_bundle_refuses_unnormalised_values(tiny_float_bundle):
    faces = seeded_faces(2, seed=6).transpose(0, 3, 1, 2).astype(np.float32)
    with Recognizer.open(tiny_float_bundle) as recognizer:
        with pytest.raises(
            ValueError, match=r"images: values span \[[\d.]+, [\d.]+\], expected \[-1, 1\].*x / 255 - 0\.5"
        ):
            recognizer.embed(faces)
        with pytest.raises(ValueError, match=r"images\[1\]: values span"):
            recognizer.embed([faces[0] / 127.5 - 1.0, np.full_like(faces[1], 1e30)])
        out = recognizer.embed((faces / 255.0 - 0.5) / 0.5)
    assert out.shape == (2, 512) and np.isfinite(out).all()

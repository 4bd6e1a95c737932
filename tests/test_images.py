"""Photo loading: orientation, colour modes, bit depths, EXIF focal length, refusals."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mfnet_core.errors import MfnetError, PhotoError
from mfnet_core.inputs.images import DEFAULT_FOV_DEG, default_focal_px, load_photo, photo_from_array


def _exif(orientation: int | None = None, **exif_ifd: float) -> Image.Exif:
    """An Exif block; keyword names are hex tag ids of the Exif sub-IFD (e.g. A405=50)."""
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    if exif_ifd:
        sub = ex.get_ifd(0x8769)
        for k, v in exif_ifd.items():
            sub[int(k.lstrip("t"), 16)] = v
    return ex


def _marked(w: int = 120, h: int = 80) -> np.ndarray:
    """Grey image with a red 20x20 block in the top-left corner."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:20, :20] = (255, 0, 0)
    return a


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    p = tmp_path / "rotated.png"
    Image.fromarray(_marked()).save(p, exif=_exif(6))
    photo = load_photo(p)
    assert photo.exif_orientation_applied
    assert photo.rgb.shape == (120, 80, 3)  # 6 = rotate 90 degrees clockwise to display
    assert photo.original_size == (80, 120)
    # The stored top-left corner ends up top-right after a clockwise turn.
    assert tuple(photo.rgb[5, -5]) == (255, 0, 0)
    assert tuple(photo.rgb[5, 5]) == (128, 128, 128)


def test_exif_orientation_jpeg_and_plain(tmp_path: Path) -> None:
    p = tmp_path / "rot3.jpg"
    Image.fromarray(_marked()).save(p, exif=_exif(3), quality=95)
    photo = load_photo(p)
    assert photo.rgb.shape == (80, 120, 3)
    assert photo.rgb[-5, -5, 0] > 200 and photo.rgb[-5, -5, 1] < 60  # rotated 180 degrees
    q = tmp_path / "plain.png"
    Image.fromarray(_marked()).save(q)
    plain = load_photo(q)
    assert not plain.exif_orientation_applied
    np.testing.assert_array_equal(plain.rgb, _marked())
    assert plain.rgb.dtype == np.uint8 and plain.rgb.flags.c_contiguous


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((80, 100, 4), np.uint8)
    a[..., 0] = 200
    a[:, :50, 3] = 255  # left half opaque red-ish, right half fully transparent
    a[:, 50:, 3] = 0
    p = tmp_path / "cutout.png"
    Image.fromarray(a, "RGBA").save(p)
    photo = load_photo(p)
    assert photo.rgb.shape == (80, 100, 3)
    assert tuple(photo.rgb[10, 10]) == (200, 0, 0)
    assert tuple(photo.rgb[10, 90]) == (255, 255, 255)
    assert any("white" in n for n in photo.notes)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (80, 80), 0)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.paste(1, (0, 0, 40, 80))
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    photo = load_photo(p)
    assert tuple(photo.rgb[5, 5]) == (10, 200, 30)
    assert tuple(photo.rgb[5, 70]) == (255, 255, 255)


def test_greyscale_l_and_la(tmp_path: Path) -> None:
    g = np.tile(np.arange(100, dtype=np.uint8)[None, :] * 2, (70, 1))
    p = tmp_path / "grey.png"
    Image.fromarray(g, "L").save(p)
    photo = load_photo(p)
    assert photo.rgb.shape == (70, 100, 3)
    for c in range(3):
        np.testing.assert_array_equal(photo.rgb[..., c], g)
    la = Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), "LA")
    q = tmp_path / "grey_alpha.png"
    la.save(q)
    np.testing.assert_array_equal(load_photo(q).rgb[..., 1], g)


def test_16bit_greyscale_scaled_not_clipped(tmp_path: Path) -> None:
    g = np.tile(np.linspace(0, 65535, 128).astype(np.uint16)[None, :], (64, 1))
    p = tmp_path / "scan16.png"
    Image.fromarray(g).save(p)  # mode I;16
    assert Image.open(p).mode.startswith("I")
    photo = load_photo(p)
    out = photo.rgb[..., 0].astype(int)
    expected = np.rint(g / 257.0).astype(int)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 0 and out[0, -1] == 255 and 120 <= out[0, 64] <= 135
    assert len(np.unique(out)) > 100  # a ramp, not a clipped step
    t = tmp_path / "scan16.tif"
    Image.fromarray(g).save(t)
    np.testing.assert_array_equal(load_photo(t).rgb[..., 2].astype(int), expected)


def test_16bit_rgb_png_and_tiff(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 96).astype(np.uint16)
    rgb16 = np.stack(
        np.broadcast_arrays(ramp[None, :], ramp[::-1][None, :], ramp[None, :] // 2), -1
    )
    rgb16 = np.ascontiguousarray(np.tile(rgb16, (64, 1, 1)))
    for ext in ("png", "tif"):
        p = tmp_path / f"rgb16.{ext}"
        assert cv2.imwrite(str(p), rgb16[..., ::-1])  # OpenCV writes BGR
        photo = load_photo(p)
        diff = np.abs(photo.rgb.astype(int) - np.rint(rgb16 / 257.0).astype(int))
        assert diff.max() <= 1, ext


def test_float_and_int32_greyscale(tmp_path: Path) -> None:
    f = np.tile(np.linspace(0.0, 1.0, 80, dtype=np.float32)[None, :], (64, 1))
    p = tmp_path / "float.tif"
    Image.fromarray(f, "F").save(p)
    out = load_photo(p).rgb[..., 0]
    assert out[0, 0] == 0 and out[0, -1] == 255


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "print.jpg"
    Image.new("CMYK", (100, 80), (0, 255, 255, 0)).save(p, quality=95)  # pure red ink
    photo = load_photo(p)
    r, g, b = (int(x) for x in photo.rgb[40, 50])
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK" in n for n in photo.notes)


def test_exif_focal_35mm_to_px(tmp_path: Path) -> None:
    p = tmp_path / "phone.jpg"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(p, exif=_exif(tA405=50))
    photo = load_photo(p)
    assert photo.focal_source == "exif-35mm"
    assert photo.focal_px == pytest.approx(50 / 36 * 300, rel=1e-6)  # 3:2: long side = 36 mm


def test_exif_focal_with_rotation_and_downscale(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    # Stored landscape 1500x1000, displayed portrait; 26 mm equivalent (a phone's main camera).
    Image.new("RGB", (1500, 1000), (90, 90, 90)).save(p, exif=_exif(6, tA405=26))
    photo = load_photo(p, max_side=600)
    assert photo.rgb.shape == (600, 400, 3)
    assert photo.original_size == (1000, 1500)
    assert photo.scale == pytest.approx(0.4)
    assert photo.focal_px == pytest.approx(26 / 36 * 1500 * 0.4, rel=1e-3)
    fov = math.degrees(2 * math.atan(0.5 * 600 / photo.focal_px))
    assert 65 < fov < 75  # what a phone's main camera sees on the long side


def test_exif_focal_plane_resolution(tmp_path: Path) -> None:
    p = tmp_path / "dslr.jpg"
    # 4.5 mm lens, 200 px per mm on the sensor -> 900 px.
    Image.new("RGB", (400, 300)).save(p, exif=_exif(t920A=4.5, tA20E=200.0, tA210=4))
    photo = load_photo(p)
    assert photo.focal_source == "exif-focal-plane"
    assert photo.focal_px == pytest.approx(900.0)


def test_bogus_exif_focal_ignored(tmp_path: Path) -> None:
    p = tmp_path / "bogus.jpg"
    Image.new("RGB", (400, 300)).save(p, exif=_exif(tA405=1))  # 1 mm equiv: a 172 degree view
    assert load_photo(p).focal_px is None


def test_no_exif_focal_and_default() -> None:
    f = default_focal_px(3000, 2000)
    assert f == pytest.approx(1500 / math.tan(math.radians(DEFAULT_FOV_DEG / 2)))
    # ~ a 50 mm lens on full frame: 50/36 * 3000 = 4167 px.
    assert f == pytest.approx(50 / 36 * 3000, rel=0.03)
    assert default_focal_px(2000, 3000) == pytest.approx(f)


def test_downscale_keeps_long_side(tmp_path: Path) -> None:
    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((300, 900, 3), np.uint8)).save(p)
    photo = load_photo(p, max_side=450)
    assert photo.rgb.shape == (150, 450, 3)
    assert photo.scale == pytest.approx(0.5)
    assert photo.focal_px is None


def test_photo_from_array() -> None:
    ph = photo_from_array(np.full((70, 90, 3), 0.5, np.float32), "synthetic_0.png")
    assert ph.rgb.dtype == np.uint8 and ph.rgb[0, 0, 0] == 128
    assert ph.name == "synthetic_0.png" and ph.path is None and ph.original_size == (90, 70)
    with pytest.raises(PhotoError, match="bad.png"):
        photo_from_array(np.zeros((5, 5, 2)), "bad.png")


# ---- refusals: every one is a PhotoError (an MfnetError) naming the file ----


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PhotoError, match="nothere.jpg"):
        load_photo(tmp_path / "nothere.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "left.jpg"
    p.write_bytes(b"this is not a jpeg at all\n" * 20)
    with pytest.raises(PhotoError, match="left.jpg") as ei:
        load_photo(p)
    assert isinstance(ei.value, MfnetError)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    p = tmp_path / "front.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(PhotoError, match="front.jpg.*(corrupt|truncated)"):
        load_photo(p)


def test_corrupt_png_body(tmp_path: Path) -> None:
    full = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 100, 3), np.uint8)).save(full)
    data = bytearray(full.read_bytes())
    data[200:260] = b"\x00" * 60  # smash the compressed image data
    p = tmp_path / "right.png"
    p.write_bytes(bytes(data))
    with pytest.raises(PhotoError, match="right.png"):
        load_photo(p)


def test_too_small(tmp_path: Path) -> None:
    p = tmp_path / "thumb.png"
    Image.new("RGB", (200, 40)).save(p)
    with pytest.raises(PhotoError, match="thumb.png.*too small"):
        load_photo(p)


def _png_claiming_size(path: Path, w: int, h: int) -> None:
    """A tiny PNG file whose header claims w x h pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "huge.png"
    _png_claiming_size(p, 10_000, 10_000)  # 100 Mpx: over our 80 Mpx limit
    with pytest.raises(PhotoError, match="huge.png.*Mpx"):
        load_photo(p)


def test_decompression_bomb(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    _png_claiming_size(p, 30_000, 30_000)  # 900 Mpx: Pillow itself raises
    with pytest.raises(PhotoError, match="bomb.png"):
        load_photo(p)


def test_folder_is_not_a_photo(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    with pytest.raises(PhotoError, match="photos"):
        load_photo(d)


# ---- not a regular file, or too large: refused before anything opens or decodes it ----


def _refused_within(call, seconds: float = 10.0) -> PhotoError:
    """`call` must raise PhotoError within `seconds` (run in a thread: a reader blocked on
    a FIFO would otherwise hang the test run)."""
    import threading

    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            result.append(None)
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"load_photo still blocked after {seconds} s"
    assert result and isinstance(result[0], PhotoError), result
    assert "\n" not in str(result[0])
    return result[0]


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "left.jpg"
    os.mkfifo(fifo)
    try:
        err = _refused_within(lambda: load_photo(fifo))
    finally:
        try:  # release a reader the old code left blocked in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "left.jpg" in str(err) and "FIFO" in str(err)


def test_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "front.png"
    link.symlink_to("/dev/zero")  # a device that never ends, behind a photo's name
    err = _refused_within(lambda: load_photo(link))
    assert "front.png" in str(err) and "device" in str(err)


def test_folder_named_like_a_photo_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "right.jpg"
    d.mkdir()
    err = _refused_within(lambda: load_photo(d))
    assert "right.jpg" in str(err) and "folder" in str(err)


def test_file_size_capped_before_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mfnet_core.inputs.images as images

    p = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (300, 300, 3), np.uint8)).save(p)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100_000)

    def no_open(*a: object, **k: object) -> None:
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(images.Image, "open", no_open)
    with pytest.raises(PhotoError, match=r"big\.png: .*MiB limit"):
        load_photo(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(PhotoError, match=r"empty\.jpg: the file is empty"):
        load_photo(p)

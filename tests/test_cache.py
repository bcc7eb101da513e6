"""Tests for vivace.data.cache: decoding, whole images and their canvas, bad files, cache reuse and rebuild."""

import os
import pickle
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vivace.data import cache as cache_module
from vivace.data.cache import ImageCache, build_cache, load_image_rgb

P = 16  # presize used throughout: tiny keeps every test fast


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _good_images(folder: Path) -> list[Path]:
    """Small valid images: several sizes, modes and formats."""
    return [
        _save(Image.new("RGB", (40, 30), (200, 10, 10)), folder / "a.png"),
        _save(Image.new("L", (30, 50), 128), folder / "b.jpg"),
        _save(Image.new("RGB", (33, 21), (10, 200, 10)), folder / "c.webp"),
        _save(Image.new("RGB", (20, 20), (10, 10, 200)), folder / "D.BMP"),
        _save(Image.new("RGB", (64, 48), (90, 90, 90)), folder / "with space é" / "ü.JPG",
              format="JPEG"),
    ]


def _bad_files(folder: Path) -> list[Path]:
    """A zero-byte file, a truncated JPEG and a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    big = _save(Image.new("RGB", (300, 200), (0, 0, 255)), folder / "full.jpg")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    big.unlink()
    text = folder / "notes.jpg"
    text.write_text("not an image\n")
    return [empty, truncated, text]


def _close(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


@pytest.mark.parametrize(
    "make, name, expected",
    [
        (lambda: Image.new("RGB", (40, 30), (200, 10, 10)), "rgb.png", (200, 10, 10)),
        (lambda: Image.new("L", (30, 50), 128), "grey.jpg", (128, 128, 128)),
        (lambda: Image.new("RGB", (30, 50), (0, 128, 255)).convert("P"), "pal.png",
         (0, 128, 255)),
        (lambda: Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "cmyk.jpg", (255, 0, 0)),
        (lambda: Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "clear.png", (255, 255, 255)),
        (lambda: Image.new("RGBA", (40, 30), (0, 0, 255, 255)), "blue.png", (0, 0, 255)),
        (lambda: Image.new("LA", (40, 30), (0, 0)), "la.png", (255, 255, 255)),
        (lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16)), "deep.png",
         (156, 156, 156)),  # 40000 / 65535 * 255, not clipped to 255
        (lambda: Image.new("RGB", (50, 30), (10, 200, 10)), "green.webp", (10, 200, 10)),
        (lambda: Image.new("1", (20, 20), 1), "bw.bmp", (255, 255, 255)),
    ],
)
def test_modes_give_rgb(tmp_path, make, name, expected):
    img = make()
    path = _save(img, tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
    out = load_image_rgb(path, P)
    w, h = img.size
    assert out.shape == (round(P * h / min(w, h)), round(P * w / min(w, h)), 3) and out.dtype == np.uint8
    assert _close(out[P // 2, P // 2], expected), out[P // 2, P // 2]


def test_palette_transparency_goes_white(tmp_path):
    img = Image.new("P", (20, 30), 0)
    img.putpalette([0, 0, 0] * 256)
    path = _save(img, tmp_path / "t.png", transparency=0)
    assert _close(load_image_rgb(path, P)[3, 3], (255, 255, 255))


def _thirds(wide: bool) -> Image.Image:
    """A 3:1 image: left red, middle green, right blue (or top to bottom, when not wide)."""
    a = np.zeros((30, 90, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:60] = (0, 255, 0)
    a[:, 60:] = (0, 0, 255)
    return Image.fromarray(a if wide else a.transpose(1, 0, 2).copy())


@pytest.mark.parametrize("wide", [True, False])
def test_three_to_one_image_is_kept_whole(tmp_path, wide):
    out = load_image_rgb(_save(_thirds(wide), tmp_path / "thirds.png"), P)
    assert out.shape == ((P, 3 * P, 3) if wide else (3 * P, P, 3))
    line = out[P // 2] if wide else out[:, P // 2]  # along the long side
    assert _close(line[1], (255, 0, 0)) and _close(line[3 * P // 2], (0, 255, 0)) and _close(line[-2], (0, 0, 255))


@pytest.mark.parametrize("wide", [True, False])
def test_wider_than_max_aspect_keeps_the_middle(tmp_path, wide):
    out = load_image_rgb(_save(_thirds(wide), tmp_path / "thirds.png"), P, max_aspect=1.5)
    assert out.shape == ((P, 24, 3) if wide else (24, P, 3))
    line = out[P // 2] if wide else out[:, P // 2]
    assert _close(line[0], (255, 0, 0), 30) and _close(line[12], (0, 255, 0)) and _close(line[-1], (0, 0, 255), 30)


@pytest.mark.parametrize("wide", [True, False])
def test_max_aspect_one_keeps_middle_third(tmp_path, wide):
    out = load_image_rgb(_save(_thirds(wide), tmp_path / "thirds.png"), P, max_aspect=1.0)  # the old centre square
    inner = out[1:-1, 1:-1].reshape(-1, 3).astype(int)  # the filter's edge may bleed one pixel
    assert (inner[:, 1] > 240).all() and (inner[:, 0] < 15).all() and (inner[:, 2] < 15).all()


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # stored: left red, right blue
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display -> top red, bottom blue
    path = _save(Image.fromarray(a), tmp_path / "rot.png", exif=exif)
    out = load_image_rgb(path, P)
    assert _close(out[2, P // 2], (255, 0, 0), 20) and _close(out[-3, P // 2], (0, 0, 255), 20)


def test_large_jpeg_uses_draft_and_keeps_size(tmp_path):
    path = _save(Image.new("RGB", (800, 600), (30, 60, 90)), tmp_path / "big.jpg", quality=95)
    out = load_image_rgb(path, 48)
    assert out.shape == (48, 64, 3) and _close(out[24, 24], (30, 60, 90))


@pytest.mark.parametrize("limit", [100, 1000])  # 1200 px: Pillow's error, then its warning
def test_decompression_bomb_refused(tmp_path, monkeypatch, limit):
    path = _save(Image.new("RGB", (40, 30)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ValueError, match=r"bomb\.png.*decompression bomb.*1200 pixels"):
        load_image_rgb(path, P)
    with pytest.warns(UserWarning, match="skipped 1 of 1"):
        cache = build_cache([path], P, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert not cache.ok[0] and "decompression bomb" in cache.skipped[0][1]


def test_build_skips_bad_files_with_one_warning(tmp_path):
    good = _good_images(tmp_path / "data")
    bad = _bad_files(tmp_path / "data")
    files = good[:2] + bad + good[2:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    ours = [w for w in caught if "could not be decoded" in str(w.message)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert "skipped 3 of 8" in message and all(p.name in message for p in bad)
    assert cache.ok.tolist() == [True, True, False, False, False, True, True, True]
    assert [p for p, _ in cache.skipped] == [f.absolute() for f in bad]
    assert cache.pixels.shape == (8, P, cache.width, 3) and cache.presize == P and len(cache) == 8
    assert cache.width == round(P * 50 / 30)  # the widest image: b.jpg, 30 x 50, stored transposed
    assert not cache.pixels[~cache.ok].any() and cache.pixels[cache.ok].any()
    assert cache.files == [f.absolute() for f in files]
    assert _close(cache.pixels[0, 8, 8], (200, 10, 10))


def test_an_open_cache_holds_numpy_rows_per_image_and_no_python_list(tmp_path):
    # At ImageNet's 1.28 M images a list of paths per cache is >100 MB in every training process:
    # the file list stays in index.json, read when asked.
    files = _good_images(tmp_path / "data")
    cache = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    per_image = [name for name, value in vars(cache).items() if isinstance(value, (list, tuple)) and len(value) == len(cache)]
    assert per_image == [] and len(cache) == len(files)
    assert cache.files == [f.absolute() for f in files]


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    files = _good_images(tmp_path / "data")
    first = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)

    def fail(path: Path, presize: int, max_aspect: float) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(cache_module, "load_image_rgb", fail)
    second = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert second.directory == first.directory
    np.testing.assert_array_equal(second.pixels, first.pixels)


def test_changes_rebuild(tmp_path):
    files = _good_images(tmp_path / "data")
    root = tmp_path / "c"
    base = build_cache(files, P, cache_dir=root, workers=1, progress=False).directory
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = build_cache(files, P, cache_dir=root, workers=1, progress=False).directory
    extra = _save(Image.new("RGB", (10, 10)), tmp_path / "data" / "z.png")
    added = build_cache(files + [extra], P, cache_dir=root, workers=1, progress=False)
    resized = build_cache(files, P + 8, cache_dir=root, workers=1, progress=False)
    assert len({base, touched, added.directory, resized.directory}) == 4
    assert len(added) == 6 and resized.presize == P + 8
    wider = build_cache(files, P, cache_dir=root, workers=1, progress=False, max_aspect=1.0)
    assert wider.directory != base and wider.width == P


def test_interrupted_build_is_rebuilt(tmp_path, monkeypatch):
    files = _good_images(tmp_path / "data")
    cache = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    expected = np.array(cache.pixels)
    (cache.directory / "index.json").unlink()  # as if killed before the index was written
    with pytest.raises(ValueError, match="interrupted"):
        ImageCache.open(cache.directory)
    calls = []
    real = cache_module.load_image_rgb
    monkeypatch.setattr(cache_module, "load_image_rgb", lambda p, s, a: calls.append(p) or real(p, s, a))
    rebuilt = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len(calls) == len(files)
    np.testing.assert_array_equal(rebuilt.pixels, expected)


def test_damaged_pixels_file_is_rebuilt(tmp_path):
    files = _good_images(tmp_path / "data")
    cache = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    expected = np.array(cache.pixels)
    with open(cache.directory / "pixels.u8", "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    np.testing.assert_array_equal(rebuilt.pixels, expected)
    assert sorted(p.name for p in rebuilt.directory.iterdir()) == [".lock", "index.json", "pixels.u8"]


def test_builders_of_one_cache_take_turns_and_decode_it_once(tmp_path, monkeypatch):
    """Two processes building one cache (machines' ranks sharing a data home): the second waits for
    the first's lock, then finds the cache built. Threads here: each opens the lock file itself."""
    files = _good_images(tmp_path / "data")
    decoding, calls, built = threading.Event(), [], []
    real = cache_module.load_image_rgb

    def slow(path: Path, presize: int, max_aspect: float) -> np.ndarray:
        calls.append(path)
        decoding.set()
        time.sleep(0.2)  # the second builder arrives meanwhile
        return real(path, presize, max_aspect)

    monkeypatch.setattr(cache_module, "load_image_rgb", slow)
    first = threading.Thread(target=lambda: built.append(
        build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)))
    first.start()
    decoding.wait(timeout=30)
    second = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    first.join(timeout=30)
    assert len(calls) == len(files)  # decoded once, by the first
    assert second.directory == built[0].directory
    np.testing.assert_array_equal(second.pixels, built[0].pixels)


def test_two_workers_match_in_process(tmp_path):
    files = _good_images(tmp_path / "data") + _bad_files(tmp_path / "bad")
    with pytest.warns(UserWarning, match="skipped 3"):
        one = build_cache(files, P, cache_dir=tmp_path / "c1", workers=1, progress=False)
    with pytest.warns(UserWarning, match="skipped 3"):
        two = build_cache(files, P, cache_dir=tmp_path / "c2", workers=2, progress=False)
    np.testing.assert_array_equal(one.pixels, two.pixels)
    assert one.ok.tolist() == two.ok.tolist() and one.skipped == two.skipped


def test_default_location_is_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VIVACE_HOME", str(tmp_path / "home"))
    cache = build_cache(_good_images(tmp_path / "data"), P, workers=1, progress=False)
    assert cache.directory.parent == tmp_path / "home" / "cache"


def test_gather_is_channels_last_in_batch_order(tmp_path):
    cache = build_cache(_good_images(tmp_path / "data"), P, cache_dir=tmp_path / "c",
                        workers=1, progress=False)
    idx = np.array([3, 0, 4, 0])
    pictures = cache.gather(idx)
    x = pictures.pixels
    assert x.shape == (4, 3, P, cache.width) and x.dtype == torch.uint8
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = torch.from_numpy(np.array(cache.pixels[idx])).permute(0, 3, 1, 2)
    assert torch.equal(x, expected)
    assert pictures.sizes.tolist() == cache.sizes[idx].tolist() == [[P, P], [P, 21], [P, 21], [P, 21]]
    assert pictures.transposed.tolist() == [False, False, False, False]
    tall = cache.gather(np.array([1]))  # b.jpg, 30 x 50: portrait, stored transposed, seen upright
    assert tall.transposed.tolist() == [True] and tuple(tall.image(0).shape) == (3, 27, P)


def test_cache_pickles_small(tmp_path):
    cache = build_cache(_good_images(tmp_path / "data"), P, cache_dir=tmp_path / "c",
                        workers=1, progress=False)
    blob = pickle.dumps(cache)
    assert len(blob) < 1000  # a path, not the pixels
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.pixels, cache.pixels)
    assert again.files == cache.files


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no files"):
        build_cache([], P, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="presize"):
        build_cache([tmp_path / "x.png"], 0, cache_dir=tmp_path)


def test_temp_file_of_a_killed_build_is_removed_by_the_next(tmp_path):
    from test_files import dead_pid, plant_temp

    files = _good_images(tmp_path / "data")
    directory = tmp_path / "c" / cache_module.cache_key(files, P)[:16]
    directory.mkdir(parents=True)
    stale = plant_temp(directory, "pixels.u8", dead_pid())  # a build killed while decoding
    cache = build_cache(files, P, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert cache.directory == directory and not stale.exists()
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "index.json", "pixels.u8"]


def test_the_headers_are_read_in_every_build_process_with_the_same_canvas(tmp_path, monkeypatch):
    # ImageNet's 1.28 M headers take over a minute in one process, before any decoding starts.
    monkeypatch.setattr(cache_module, "HEADER_CHUNK", 2)  # several tasks from a handful of files
    files = [str(f) for f in _good_images(tmp_path / "data") + _bad_files(tmp_path / "data")]
    wide = _save(Image.new("RGB", (90, 30), (1, 2, 3)), tmp_path / "data" / "wide.png")  # 3:1, in the last task
    files.append(str(wide))
    one = cache_module.canvas_width(files, P, 3.0)
    assert one == round(P * 3) and cache_module.canvas_width(files, P, 3.0, workers=2) == one
    assert cache_module.canvas_width(files, P, 1.5, workers=2) == cache_module.canvas_width(files, P, 1.5) == round(P * 1.5)
    Image.MAX_IMAGE_PIXELS, limit = 1000, Image.MAX_IMAGE_PIXELS  # the parent's bomb limit holds in the readers
    try:
        assert cache_module.canvas_width(files, P, 3.0, workers=2) == cache_module.canvas_width(files, P, 3.0) < one
    finally:
        Image.MAX_IMAGE_PIXELS = limit

"""bgekit.images: CLIP preprocessing against a computation written out here (Pillow's
bicubic resize, numpy crop and normalisation) and transformers' PIL processor; hostile
images each give one ImageError / ImageTooLargeError naming the item, never decoding a bomb."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as photos

from bgekit.images import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageError,
    ImageInput,
    ImageLimits,
    ImagePreprocess,
    ImageTooLargeError,
    image_from_base64,
    load_pixels,
    open_image,
    preprocess,
)

Crop = Literal["round", "floor"]


def by_hand(
    img: Image.Image, size: int, crop: Crop, rgb_first: bool, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """The CLIP pipeline step by step: short side to ``size`` (Pillow bicubic), centre crop
    by numpy slicing, RGB, /255, mean and std in float64."""
    if rgb_first:
        img = img.convert("RGB")
    w, h = img.size
    short, long = min(w, h), max(w, h)
    edge = int(size * long / short)
    new = (size, edge) if w <= h else (edge, size)
    if new != (w, h):
        img = img.resize(new, Image.Resampling.BICUBIC)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)  # pointwise: the same before or after the crop
    margin_y, margin_x = rgb.shape[0] - size, rgb.shape[1] - size
    if crop == "floor":
        top, left = margin_y // 2, margin_x // 2
    else:
        top, left = round(margin_y / 2), round(margin_x / 2)  # half to even, as torchvision
    x = rgb[top : top + size, left : left + size] / 255.0
    return ((x - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


def palette(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


# skimage photos cut to sizes whose resize margins are 3 mod 4 at 224 (round and floor
# then start the crop one pixel apart), plus grey, RGBA and palette images
PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "astronaut 511x503 RGB": lambda: Image.fromarray(photos.astronaut()[:503, :511]),
    "coffee 599x400 RGB": lambda: Image.fromarray(photos.coffee()[:, :599]),
    "chelsea 449x300 RGB": lambda: Image.fromarray(photos.chelsea()[:, :449]),
    "rocket 421x427 RGB (portrait)": lambda: Image.fromarray(photos.rocket()[:, :421].copy()),
    "camera 505x301 L": lambda: Image.fromarray(photos.camera()[:301, :505]),
    "logo 499x491 RGBA": lambda: Image.fromarray(photos.logo()[:491, :499]),
    "astronaut 397x301 P": lambda: palette(photos.astronaut()[:301, :397]),
}


def _margin(img: Image.Image, size: int) -> int:
    w, h = img.size
    return int(size * max(w, h) / min(w, h)) - size


@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("crop", ["round", "floor"])
@pytest.mark.parametrize("rgb_first", [True, False])
def test_preprocess_matches_the_pipeline_by_hand(name: str, crop: Crop, rgb_first: bool) -> None:
    img = PHOTOS[name]()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for spec in (
        ImagePreprocess(size=224, crop=crop, rgb_first=rgb_first),
        ImagePreprocess(size=97, mean=mean, std=std, crop=crop, rgb_first=rgb_first),
    ):
        got = preprocess(img, spec)
        assert got.shape == (3, spec.size, spec.size) and got.dtype == np.float32
        want = by_hand(img, spec.size, crop, rgb_first, spec.mean, spec.std)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_crop_rules_differ_on_these_photos() -> None:
    """The photos above do tell the two crop rules apart (else the test above could not)."""
    for name, make in PHOTOS.items():
        img = make()
        assert _margin(img, 224) % 4 == 3, name
        floor = preprocess(img, ImagePreprocess(crop="floor"))
        rnd = preprocess(img, ImagePreprocess(crop="round"))
        assert np.abs(floor - rnd).max() > 0.1, name


def test_rgb_first_matters_for_palette_images() -> None:
    """Pillow resizes a palette image by nearest neighbour: converting first differs."""
    img = PHOTOS["astronaut 397x301 P"]()
    first = preprocess(img, ImagePreprocess(rgb_first=True))
    after = preprocess(img, ImagePreprocess(rgb_first=False))
    assert np.abs(first - after).max() > 0.1


def _clip_processor() -> object:
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil()
    except ImportError:
        pass
    try:  # transformers 4: the slow processor is PIL-based
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor()
    except ImportError as e:  # pragma: no cover - depends on the install
        pytest.skip(f"transformers' PIL-based CLIP image processor is not available: {e}")


@pytest.mark.parametrize("name", list(PHOTOS))
def test_floor_rgb_first_is_transformers_clip_processor(name: str) -> None:
    """``crop="floor", rgb_first=True`` is transformers' CLIPImageProcessor. On an RGBA
    image transformers composites onto white; BGE-VL's reference converts to RGB first
    (alpha dropped), which is what bgekit does, so the comparison converts too."""
    proc = _clip_processor()
    img = PHOTOS[name]()
    given = img.convert("RGB") if img.mode == "RGBA" else img
    want = proc(images=given, return_tensors="np")["pixel_values"][0]  # type: ignore[operator]
    got = preprocess(img, ImagePreprocess(crop="floor", rgb_first=True))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_sixteen_bit_grey_keeps_its_contrast() -> None:
    """Pillow's own convert clips 16-bit grey at 255 (a white image); bgekit takes the
    high byte, as Pillow does for 16-bit RGB."""
    grey = photos.camera()[:301, :505]
    deep = grey.astype(np.uint16) * 256 + 128  # low bytes a 16-bit file holds, dropped
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.mode == "I;16"
    got = preprocess(img, ImagePreprocess(crop="floor"))
    want = preprocess(Image.fromarray(grey), ImagePreprocess(crop="floor"))
    np.testing.assert_array_equal(got, want)


def test_extreme_aspect_ratio_resizes_only_the_kept_centre(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 x 200,000 strip (200k pixels, within the limit) would resize to 224 x 44.8M
    pixels; only the crop's centre is resized, within one level of the whole resize."""
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        sizes.append(tuple(size))  # type: ignore[arg-type]
        assert size[0] * size[1] <= 32 * 224 * 224, f"resize to {size}"
        return resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (200_000, 1, 3), dtype=np.uint8))
    assert preprocess(strip, ImagePreprocess()).shape == (3, 224, 224)
    assert sizes == [(224, 224)]
    monkeypatch.setattr(Image.Image, "resize", resize)
    # past 32:1, small enough to resize whole here: the centre alone is within 1/255
    wide = Image.fromarray(rng.integers(0, 256, (5, 401, 3), dtype=np.uint8))
    for crop in ("round", "floor"):
        got = preprocess(wide, ImagePreprocess(size=16, crop=crop))  # type: ignore[arg-type]
        want = by_hand(wide, 16, crop, False, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)  # type: ignore[arg-type]
        levels = np.abs(got - want) * np.array(OPENAI_CLIP_STD)[:, None, None] * 255
        assert levels.max() < 1.0 + 1e-3 and np.mean(levels > 1e-3) < 0.05


# -- hostile images ----------------------------------------------------------------------


def _encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with a tiny zlib
    stream (two rows of zeros): what a decoder would allocate gigabytes for."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (3 * min(width, 4096) + 1) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


ASTRO = photos.astronaut()
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>'


def _gif() -> bytes:
    frames = [Image.fromarray(ASTRO[i * 50 : i * 50 + 90, :120]) for i in range(3)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _files(root: Path) -> dict[str, Path]:
    (root / "note.txt").write_text("a text file, not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    (root / "drawing.svg").write_bytes(SVG)
    (root / "big.png").write_bytes(_encoded(Image.fromarray(ASTRO), "PNG"))
    return {p.name: p for p in root.iterdir()}


OK = "ok"
# name -> (make the input from the files folder, limits, outcome of open_image, of load_pixels)
Case = tuple[Callable[[dict[str, Path]], ImageInput], ImageLimits, tuple[object, str], tuple[object, str]]
JPEG = _encoded(Image.fromarray(ASTRO), "JPEG")
PNG = _encoded(Image.fromarray(ASTRO), "PNG")
SMALL = ImageLimits(max_bytes=100_000)
CASES: dict[str, Case] = {
    "empty bytes": (
        lambda f: ImageInput(data=b"", name="inputs[0]"),
        ImageLimits(),
        (ImageError, r"^inputs\[0\]: empty, not an image$"),
        (ImageError, r"^inputs\[0\]: empty, not an image$"),
    ),
    "random bytes": (
        lambda f: ImageInput(data=np.random.default_rng(0).bytes(5000), name="noise"),
        ImageLimits(),
        (ImageError, r"^noise: not an image Pillow can read$"),
        (ImageError, r"^noise: not an image Pillow can read$"),
    ),
    "a text file": (
        lambda f: ImageInput.of(f["note.txt"]),
        ImageLimits(),
        (ImageError, r"note\.txt: not an image Pillow can read$"),
        (ImageError, r"note\.txt: not an image Pillow can read$"),
    ),
    "JPEG cut at half": (
        lambda f: ImageInput(data=JPEG[: len(JPEG) // 2], name="half.jpg"),
        ImageLimits(),
        (OK, "512x512"),  # the header is whole; decoding finds the cut
        (ImageError, r"^half\.jpg: corrupt or truncated image \(image file is truncated"),
    ),
    "PNG cut at half": (
        lambda f: ImageInput(data=PNG[: len(PNG) // 2], name="half.png"),
        ImageLimits(),
        (OK, "512x512"),
        (ImageError, r"^half\.png: corrupt or truncated image \(image file is truncated"),
    ),
    "PNG bomb 100000x100000": (
        lambda f: ImageInput(data=png_bomb(100_000, 100_000), name="bomb.png"),
        ImageLimits(),
        (
            ImageTooLargeError,
            r"^bomb\.png: 10,000,000,000 pixels, too many to open \(a decompression bomb\?\)$",
        ),
        (ImageTooLargeError, r"^bomb\.png: 10,000,000,000 pixels, too many to open"),
    ),
    "PNG bomb 9000x9000 (under Pillow's own limit)": (
        lambda f: ImageInput(data=png_bomb(9000, 9000), name="bomb2.png"),
        ImageLimits(),
        (ImageTooLargeError, r"^bomb2\.png: 9000x9000 = 81,000,000 pixels, over the limit of 50,000,000$"),
        (ImageTooLargeError, r"^bomb2\.png: 9000x9000 = 81,000,000 pixels, over the limit"),
    ),
    "bytes over max_bytes": (
        lambda f: ImageInput(data=PNG, name="inputs[2]"),
        SMALL,
        (ImageTooLargeError, rf"^inputs\[2\]: {len(PNG):,} bytes, over the limit of 100,000$"),
        (ImageTooLargeError, r"^inputs\[2\]: .* bytes, over the limit of 100,000$"),
    ),
    "file over max_bytes": (
        lambda f: ImageInput.of(f["big.png"]),
        SMALL,
        (ImageTooLargeError, r"big\.png: .* bytes, over the limit of 100,000$"),
        (ImageTooLargeError, r"big\.png: .* bytes, over the limit of 100,000$"),
    ),
    "over max_pixels": (
        lambda f: ImageInput(data=JPEG, name="photo.jpg"),
        ImageLimits(max_pixels=100_000),
        (ImageTooLargeError, r"^photo\.jpg: 512x512 = 262,144 pixels, over the limit of 100,000$"),
        (ImageTooLargeError, r"^photo\.jpg: 512x512 = 262,144 pixels, over the limit of 100,000$"),
    ),
    "0-byte file": (
        lambda f: ImageInput.of(f["empty.png"]),
        ImageLimits(),
        (ImageError, r"empty\.png: empty, not an image$"),
        (ImageError, r"empty\.png: empty, not an image$"),
    ),
    "missing path": (
        lambda f: ImageInput.of(f["note.txt"].with_name("missing.png")),
        ImageLimits(),
        (ImageError, r"missing\.png: cannot read the image \(No such file or directory\)$"),
        (ImageError, r"missing\.png: cannot read the image \(No such file or directory\)$"),
    ),
    "a directory": (
        lambda f: ImageInput.of(f["folder.png"]),
        ImageLimits(),
        (ImageError, r"folder\.png: cannot read the image \(Is a directory\)$"),
        (ImageError, r"folder\.png: cannot read the image \(Is a directory\)$"),
    ),
    "SVG / XML file": (
        lambda f: ImageInput.of(f["drawing.svg"]),
        ImageLimits(),
        (ImageError, r"drawing\.svg: not an image Pillow can read$"),
        (ImageError, r"drawing\.svg: not an image Pillow can read$"),
    ),
    "GIF, 3 frames": (
        lambda f: ImageInput(data=_gif(), name="anim.gif"),
        ImageLimits(),
        (OK, "120x90"),
        (OK, "first frame"),
    ),
    "16-bit grey PNG": (
        lambda f: ImageInput(
            data=_encoded(Image.fromarray(np.full((40, 50), 40000, np.uint16)), "PNG"), name="d"
        ),
        ImageLimits(),
        (OK, "50x40"),
        (OK, "grey 156"),
    ),
    "CMYK JPEG": (
        lambda f: ImageInput(data=_encoded(Image.fromarray(ASTRO).convert("CMYK"), "JPEG"), name="cmyk.jpg"),
        ImageLimits(),
        (OK, "512x512"),
        (OK, "like the RGB photo"),
    ),
    "1x1 image": (
        lambda f: ImageInput(data=_encoded(Image.new("RGB", (1, 1), (200, 10, 30)), "PNG"), name="dot.png"),
        ImageLimits(),
        (OK, "1x1"),
        (OK, "one colour"),
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("hostile"))


def _outcome(run: Callable[[], object], expected: tuple[object, str]) -> object:
    kind, what = expected
    if kind == OK:
        return run()
    with pytest.raises(ImageError) as err:  # never another exception type
        run()
    assert type(err.value) is kind, f"{type(err.value).__name__}: {err.value}"
    assert "\n" not in str(err.value)
    assert err.match(what)
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_images(name: str, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    make, limits, opened, loaded = CASES[name]
    item = make(files)
    decoded: list[str] = []
    load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(item.name)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    img = _outcome(lambda: open_image(item, limits), opened)
    if img is not None:
        assert "x".join(map(str, img.size)) == opened[1]  # type: ignore[attr-defined]
    assert not decoded  # opening reads the header only
    spec = ImagePreprocess(size=32, crop="floor", rgb_first=True)
    pixels = _outcome(lambda: load_pixels([item], spec, limits), loaded)
    if loaded[0] is not OK:
        if loaded[0] is ImageTooLargeError:
            assert not decoded  # refused before any pixel is decoded
        return
    assert isinstance(pixels, np.ndarray) and pixels.shape == (1, 3, 32, 32)
    rgb = pixels[0] * np.array(OPENAI_CLIP_STD)[:, None, None] + np.array(OPENAI_CLIP_MEAN)[:, None, None]
    if name == "16-bit grey PNG":
        np.testing.assert_allclose(rgb, 156 / 255, atol=1e-6)  # 40000 >> 8
    elif name == "1x1 image":
        colour = np.array([200, 10, 30])[:, None, None] / 255
        np.testing.assert_allclose(rgb, np.broadcast_to(colour, rgb.shape), atol=1e-6)
    elif name == "CMYK JPEG":
        photo = load_pixels([ImageInput(data=PNG)], spec)[0]
        assert np.corrcoef(photo.ravel(), pixels[0].ravel())[0, 1] > 0.95
    elif name == "GIF, 3 frames":
        first = Image.open(io.BytesIO(_gif())).convert("RGB")
        np.testing.assert_allclose(pixels[0], preprocess(first, spec), atol=1e-6)


def test_the_bomb_is_small_and_pillow_bomb_warning_yields_to_the_limits() -> None:
    """The bomb is a few hundred bytes; a header Pillow only warns about (past ~89M pixels)
    opens when ``max_pixels`` allows it (opening decodes nothing)."""
    assert len(png_bomb(100_000, 100_000)) < 2_000
    item = ImageInput(data=png_bomb(10_000, 10_000), name="wide.png")
    with pytest.raises(ImageTooLargeError, match="over the limit of 50,000,000"):
        open_image(item)
    assert open_image(item, ImageLimits(max_pixels=200_000_000)).size == (10_000, 10_000)


def test_a_batch_names_the_bad_item() -> None:
    good = ImageInput(data=PNG, name="inputs[0]")
    bad = ImageInput(data=b"GIF89a broken", name="inputs[1]")
    with pytest.raises(ImageError, match=r"^inputs\[1\]: "):
        load_pixels([good, bad], ImagePreprocess(size=16))


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("@@@not base64@@@", r"^q: not valid base64$"),
        ("aGVsbG8", r"^q: not valid base64$"),  # missing padding
        ("data:text/plain;base64,aGVsbG8=", r"^q: the data URI holds text/plain, not an image$"),
        ("data:;base64,aGVsbG8=", r"^q: the data URI holds no type, not an image$"),
        ("data:image/png,iVBORw0KGgo=", r"^q: a data URI must be 'data:image/<type>;base64,<data>'$"),
        ("data:image/png;base64", r"^q: a data URI must be"),
        ("data:application/octet-stream;base64,aGVsbG8=", r"holds application/octet-stream, not an image$"),
    ],
)
def test_bad_base64(value: str, outcome: str) -> None:
    with pytest.raises(ImageError, match=outcome):
        image_from_base64(value, "q")


def test_base64_images() -> None:
    spec = ImagePreprocess(size=16)
    want = load_pixels([ImageInput(data=PNG)], spec)
    text = base64.b64encode(PNG).decode()
    for value in (
        text,
        f"data:image/png;base64,{text}",
        f"  DATA:Image/PNG;BASE64,{text}\n",
        base64.encodebytes(PNG).decode(),  # MIME: a line break every 76 characters
    ):
        item = image_from_base64(value, "q")
        assert item.name == "q" and item.data == PNG
        np.testing.assert_array_equal(load_pixels([item], spec), want)
    # valid base64 of something else fails when opened, naming the item
    for value, message in (("aGVsbG8=", "q: not an image Pillow can read"), ("", "q: empty, not an image")):
        with pytest.raises(ImageError, match=f"^{message}$"):
            open_image(image_from_base64(value, "q"))


def test_a_pillow_plugin_not_implemented_is_an_image_error() -> None:
    from tests.test_server_hostile_images import dds_unknown_format

    with pytest.raises(ImageError, match=r"^odd\.dds: an image variant Pillow cannot read"):
        open_image(ImageInput(data=dds_unknown_format(), name="odd.dds"))

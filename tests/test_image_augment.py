"""ImageAugment: SimCLR image augmentation built on ClipAugment (one-frame clips) plus a Gaussian blur."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tdann_fast.data.augment import ClipAugment
from tdann_fast.data.image_augment import ImageAugment, blur_kernel_size, gaussian_blur
from tdann_fast.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from tdann_fast.train.config import AugmentConfig


def images(rng, b=4, h=24, w=24):
    return torch.from_numpy(rng.integers(0, 256, size=(b, h, w, 3), dtype="uint8"))


def normalise(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_normalisation(rng):
    out = ImageAugment(16)(images(rng, 5, 20, 28), gen(0))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # no randomness left: the whole square image, constant colour per image → the normalised colour
    colours = torch.from_numpy(rng.integers(0, 256, size=(3, 1, 1, 3), dtype="uint8"))
    flat = colours.expand(3, 12, 12, 3).contiguous()
    aug = ImageAugment(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0, p_grayscale=0, p_flip=0, p_blur=1.0)
    expected = normalise(colours.permute(0, 3, 1, 2).float() / 255).expand(3, 3, 8, 8)
    torch.testing.assert_close(aug(flat, gen(1)), expected, rtol=0, atol=1e-5)


def test_same_seed_same_output(rng):
    x = images(rng)
    aug = ImageAugment(12)
    a, b, c = aug(x, gen(7)), aug(x, gen(7)), aug(x, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_center_is_the_plain_centre_crop_resize_normalise(rng):
    aug = ImageAugment(10, p_blur=1.0)
    x = images(rng, 3, 20, 28)  # centre square 20×20 at columns 4..23, downsampled by 2
    out = aug.center(x)
    assert torch.equal(out, aug.center(x))
    crop = x[:, :, 4:24].permute(0, 3, 1, 2).float() / 255
    expected = normalise(F.interpolate(crop, size=(10, 10), mode="bilinear", align_corners=False))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    square = images(rng, 2, 16, 16)  # a square image: ClipAugment's centre transform of the one-frame clip
    clip = ClipAugment(10, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(aug.center(square), clip.center(square[:, None]).squeeze(2))


def test_without_blur_it_is_clip_augment_on_one_frame_clips(rng):
    x = images(rng, 6, 18, 22)
    kw = dict(scale=(0.3, 1.0), ratio=(0.8, 1.25), brightness=0.3, contrast=0.5, saturation=0.2, hue=0.05,
              p_jitter=0.7, p_grayscale=0.3, p_flip=0.5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    out = ImageAugment(12, p_blur=0.0, **kw)(x, gen(3))
    clip = ClipAugment(12, **kw)(x[:, None], gen(3))
    assert clip.shape == (6, 3, 1, 12, 12)
    assert torch.equal(out, clip.squeeze(2))


def test_blur_commutes_with_normalisation(rng):
    x = torch.from_numpy(rng.random(size=(3, 3, 15, 15))).float()
    sigma = torch.from_numpy(rng.uniform(0.1, 2.0, size=3)).float()
    k = blur_kernel_size(15)
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.4, 0.9)
    torch.testing.assert_close(gaussian_blur(normalise(x, mean, std), sigma, k),
                               normalise(gaussian_blur(x, sigma, k), mean, std), rtol=0, atol=1e-5)
    const = torch.full((1, 3, 9, 9), 0.37)  # the kernel sums to 1 and the padding reflects: constants stay
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([1.5]), 5), const)


def _high_frequency_energy(x):
    f = torch.fft.fft2(x).abs() ** 2
    n = x.shape[-1]
    freq = torch.fft.fftfreq(n).abs()
    high = (freq.view(-1, 1) > 0.25) | (freq.view(1, -1) > 0.25)
    return f[..., high].sum().item()


def test_blur_reduces_high_frequency_energy(rng):
    x = images(rng, 4, 32, 32)
    common = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0, p_grayscale=0)
    sharp = ImageAugment(32, p_blur=0.0, **common)(x, gen(5))
    blurred = ImageAugment(32, p_blur=1.0, blur_sigma=(1.0, 2.0), **common)(x, gen(5))
    for s, b in zip(sharp, blurred):
        assert _high_frequency_energy(b) < 0.2 * _high_frequency_energy(s)
    weak = ImageAugment(32, p_blur=1.0, blur_sigma=(0.1, 0.1), **common)(x, gen(5))  # sigma 0.1 px: ~identity
    torch.testing.assert_close(weak, sharp, rtol=0, atol=1e-4)


def test_blur_kernel_size_follows_simclr():
    assert [blur_kernel_size(s) for s in (224, 112, 64, 32, 8, 2, 1)] == [23, 11, 7, 3, 3, 3, 1]


def test_from_config_reads_blur_fields_with_defaults():
    base = {k: getattr(AugmentConfig(), k) for k in ("scale_min", "ratio_min", "ratio_max", "brightness", "contrast",
                                                     "saturation", "hue", "p_jitter", "p_grayscale", "p_flip")}
    aug = ImageAugment.from_config(16, SimpleNamespace(**base), IMAGENET_MEAN, IMAGENET_STD)  # no blur fields
    assert (aug.p_blur, aug.blur_sigma, aug.clip.scale) == (0.5, (0.1, 2.0), (base["scale_min"], 1.0))
    cfg = AugmentConfig()
    aug = ImageAugment.from_config(16, cfg, IMAGENET_MEAN, IMAGENET_STD)  # whatever the config's own defaults are
    assert (aug.p_blur, aug.blur_sigma) == (getattr(cfg, "p_blur", 0.5), (getattr(cfg, "blur_sigma_min", 0.1),
                                                                        getattr(cfg, "blur_sigma_max", 2.0)))
    cfg = SimpleNamespace(**base, p_blur=0.25, blur_sigma_min=0.5, blur_sigma_max=1.5)
    aug = ImageAugment.from_config(16, cfg, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert (aug.p_blur, aug.blur_sigma, aug.clip.mean) == (0.25, (0.5, 1.5), (0.5, 0.5, 0.5))


def test_argument_errors(rng):
    for name in ("p_blur", "p_jitter", "p_grayscale", "p_flip"):
        with pytest.raises(ValueError, match=rf"{name}: expected a probability in \[0, 1\]"):
            ImageAugment(8, **{name: 1.5})
    for bad in ((0.0, 1.0), (2.0, 1.0), (0.1, float("inf"))):
        with pytest.raises(ValueError, match=r"blur_sigma: expected finite 0 < min <= max"):
            ImageAugment(8, blur_sigma=bad)
    with pytest.raises(ValueError, match=r"size: expected a positive integer"):
        ImageAugment(0)
    with pytest.raises(ValueError, match=r"scale: expected"):
        ImageAugment(8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"std: expected 3 values > 0"):
        ImageAugment(8, std=(0.2, 0.0, 0.2))
    aug = ImageAugment(8)
    for bad in (images(rng).float(), images(rng)[0], images(rng)[..., :2], "image"):
        with pytest.raises(ValueError, match=r"images: expected a uint8 \(B, H, W, 3\) tensor"):
            aug(bad)
    with pytest.raises(ValueError, match=r"images: expected a uint8"):
        aug.center(images(rng)[0])
    with pytest.raises(ValueError, match=r"kernel_size: expected an odd positive integer"):
        gaussian_blur(torch.zeros(1, 3, 8, 8), torch.ones(1), 4)
    with pytest.raises(ValueError, match=r"sigma: expected a \(1,\) tensor"):
        gaussian_blur(torch.zeros(1, 3, 8, 8), torch.ones(2), 3)

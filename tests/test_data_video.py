"""Data: VideoFolder (corrupt files, mixed sizes/lengths), clip pairs, sampler, synthetic motion, augmentation."""
import warnings

import numpy as np
import pytest
import torch

from tdann_fast.data import (ClipAugment, ClipPairDataset, DriftingGratings, ResumableSampler, SyntheticMotion,
                             VideoFolder, collate_pairs, embedded_video_paths, read_frames)
from _videos import write_video


@pytest.fixture
def video_dir(tmp_path, rng):
    root = tmp_path / "videos"
    (root / "classA").mkdir(parents=True)
    (root / "classB" / "deep").mkdir(parents=True)
    write_video(root / "classA" / "a.mp4", 12, rng, width=48, height=32)
    write_video(root / "classB" / "deep" / "b.avi", 7, rng, width=64, height=64)
    write_video(root / "classB" / "c.mkv", 20, rng, width=40, height=56)
    (root / "classA" / "broken.mp4").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (root / "classA" / "notes.txt").write_text("not a video")
    return root


def test_video_folder_skips_corrupt_and_counts(video_dir):
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable"):
        vf = VideoFolder(video_dir, side=24)
    assert len(vf) == 3
    assert len(vf.skipped) == 1 and vf.skipped[0][0].endswith("broken.mp4")
    assert sorted(vf.frame_counts) == [7, 12, 20]
    assert (video_dir / ".tdann_fast_index.json").is_file()
    with pytest.warns(RuntimeWarning):  # cached index: same result, the broken file still counted
        vf2 = VideoFolder(video_dir, side=24)
    assert vf2.frame_counts == vf.frame_counts and len(vf2.skipped) == 1
    for i in range(len(vf)):
        clip = vf.read_clip(i, np.arange(0, 10, 2))  # wraps around short videos
        assert clip.shape == (5, 24, 24, 3) and clip.dtype == np.uint8


def test_read_frames_native_size(video_dir):
    frames = read_frames(video_dir / "classB" / "c.mkv", [0, 3, 19])
    assert frames.shape == (3, 56, 40, 3)
    with pytest.raises(ValueError, match="indices"):
        read_frames(video_dir / "classB" / "c.mkv", [])


def test_clip_pairs_shapes_and_decode_failure(video_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vf = VideoFolder(video_dir, side=20)
    ds = ClipPairDataset(vf, frames=4, stride=2, length=10, seed=1)
    q, k, faults = ds[3]
    assert q.shape == k.shape == (4, 20, 20, 3) and q.dtype == torch.uint8 and faults == ()
    assert torch.equal(ds[3][0], q)  # a sample is a pure function of its index
    # a file that becomes unreadable after indexing is skipped at read time, never a crash, and recorded
    vf.paths[0].write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="cannot read"):
        q0, _, faults0 = ds[0]
    assert q0.shape == (4, 20, 20, 3) and vf.read_failures >= 1
    assert [(f.path, f.kind) for f in faults0] == [(str(vf.paths[0]), "unreadable")]
    qb, kb, fb = collate_pairs([ds[1], ds[2]])
    assert qb.shape == kb.shape == (2, 4, 20, 20, 3) and fb == []


def test_video_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root"):
        VideoFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="root"):
        VideoFolder()


def test_resumable_sampler_resume_and_shards():
    s = ResumableSampler(23, num_replicas=2, rank=0, seed=5)
    s1 = ResumableSampler(23, num_replicas=2, rank=1, seed=5)
    a, b = list(s), list(s1)
    assert len(a) == len(b) == 11 and not set(a) & set(b)
    s.set_epoch(0, offset=4)
    assert list(s) == a[4:]
    s.set_epoch(1)
    e1 = list(s)
    assert all(23 <= i < 46 for i in e1) and [i - 23 for i in e1] != a


def test_synthetic_motion_seeded_and_moving():
    sm = SyntheticMotion(5, num_frames=16, side=32, seed=3)
    clip = sm.read_clip(2, np.arange(8))
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, SyntheticMotion(5, num_frames=16, side=32, seed=3).read_clip(2, np.arange(8)))
    diffs = [np.abs(clip[t + 1].astype(int) - clip[t].astype(int)).mean() for t in range(7)]
    assert max(diffs) > 0.5  # it moves
    assert not np.array_equal(clip, SyntheticMotion(5, num_frames=16, side=32, seed=4).read_clip(2, np.arange(8)))


def test_embedded_videos_present():
    names = [p.name for p in embedded_video_paths()]
    assert {"bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"} <= set(names)
    frames = read_frames(embedded_video_paths()[-1], [0, 5], side=16)
    assert frames.shape == (2, 16, 16, 3)


def test_augment_identical_on_every_frame(rng):
    B, T, S = 6, 5, 24
    frame = torch.from_numpy(rng.integers(0, 256, size=(B, 1, 40, 40, 3), dtype=np.uint8))
    clips = frame.expand(B, T, 40, 40, 3).contiguous()
    aug = ClipAugment(S, p_jitter=1.0, p_grayscale=0.5, p_flip=0.5)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    out = aug(clips, gen)
    assert out.shape == (B, 3, T, S, S)
    for t in range(1, T):  # same crop/flip/jitter/grayscale on every frame of a clip
        torch.testing.assert_close(out[:, :, t], out[:, :, 0], rtol=0, atol=1e-5)
    # a different frame content with the same parameters: frame-wise application equals the clip application
    clips2 = torch.from_numpy(rng.integers(0, 256, size=(B, T, 40, 40, 3), dtype=np.uint8))
    params = aug.sample_params(B, gen)
    params.contrast = torch.ones(B)  # contrast pivots on the clip mean (all frames), the rest is frame-local
    whole = aug(clips2, params=params)
    for t in range(T):
        single = aug(clips2[:, t:t + 1], params=params)
        torch.testing.assert_close(whole[:, :, t:t + 1], single, rtol=1e-5, atol=1e-5)
    # clips differ across the batch (parameters are per clip)
    assert not torch.allclose(out[0], out[1])


def test_augment_center_and_errors():
    aug = ClipAugment(16)
    x = torch.full((2, 3, 20, 20, 3), 128, dtype=torch.uint8)
    y = aug.center(x)
    assert y.shape == (2, 3, 3, 16, 16) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="clips"):
        aug(torch.zeros(2, 3, 20, 20))
    with pytest.raises(ValueError, match="p_flip"):
        ClipAugment(16, p_flip=2.0)


def test_drifting_gratings_shape():
    """The one grating generator (tdann_fast.data.gratings), also what the analysis imports."""
    from tdann_fast.analysis.stimuli import DriftingGratings as analysis_gratings
    from tdann_fast.analysis.stimuli import KINETICS_MEAN
    from tdann_fast.data.normalization import KINETICS_MEAN as home_mean

    assert analysis_gratings is DriftingGratings and KINETICS_MEAN is home_mean
    g = DriftingGratings(frames=6, size=16, num_directions=4, spatial_freqs=[2.0], temporal_freqs=[0.25],
                         num_phases=2)
    clips = torch.cat(list(g.batches(3)))
    assert clips.shape == (8, 3, 6, 16, 16) and len(g) == 8
    assert np.degrees(g.conditions()[:, 0]).round().tolist() == [0, 0, 90, 90, 180, 180, 270, 270]
    assert not torch.allclose(clips[:, :, 0], clips[:, :, 1])  # drifting
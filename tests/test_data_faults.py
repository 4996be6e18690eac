"""Video faults are seen: truncated files, faults of DataLoader workers, the skip table, the torchcodec probe and
read-only data folders."""
import json
import os
import sys
import types
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from tdann_fast.data import (ClipPairDataset, TruncatedVideoError, VideoFault, VideoFolder, collate_pairs,
                             count_frames, format_fault_table, read_all_frames, read_frames, summarize_faults)
from tdann_fast.data import decode

from _videos import truncate_after as _truncate_after
from _videos import write_video as _write_avi

INDEX_NAME = ".tdann_fast_index.json"


@pytest.fixture
def truncated(tmp_path, rng):
    """A folder holding one AVI whose header claims 10 frames of which 3 decode, and those 3 frames."""
    root = tmp_path / "videos"
    root.mkdir()
    path = root / "cut.avi"
    _write_avi(path, 10, rng)
    _truncate_after(path, 3)
    real = read_all_frames(path)
    assert count_frames(path) == 10 and len(real) == 3  # the premise of every test below
    return path, real


def _frame_number(frame, real):
    matches = [j for j in range(len(real)) if np.array_equal(frame, real[j])]
    assert len(matches) == 1, "a clip frame that is not one of the frames in the file"
    return matches[0]


# -- 1. truncated videos ---------------------------------------------------------------------------------------
def test_read_frames_raises_on_truncated_video(truncated):
    path, real = truncated
    assert np.array_equal(read_frames(path, [0, 2]), real[[0, 2]])
    with pytest.raises(TruncatedVideoError) as info:
        read_frames(path, [1, 5, 8])  # the old reader returned frame 2 three times for 5 and 8
    assert info.value.frames == 3 and info.value.path == str(path)


@pytest.mark.parametrize("cache_in_memory", [False, True])
def test_truncated_video_clips_hold_only_frames_of_the_file(truncated, cache_in_memory):
    path, real = truncated
    vf = VideoFolder(path.parent, cache_in_memory=cache_in_memory)
    assert vf.num_frames(0) == 10  # what the index claims
    ds = ClipPairDataset(vf, frames=2, stride=1, length=8, seed=0)
    faults = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(ds)):
            sample = ds[i]
            for clip in sample[:2]:  # consecutive frames that exist, never a copy standing in for a missing one
                j = _frame_number(clip[0].numpy(), real)
                assert j + 1 < len(real) and _frame_number(clip[1].numpy(), real) == j + 1
            faults += list(sample[2])
    assert vf.num_frames(0) == 3  # corrected in this process: the fault is met once, then the count is right
    assert faults == [VideoFault(str(path), "truncated", "fewer frames decode than claimed; 3 of 10 decode")]


def test_truncated_video_shorter_than_clip_wraps_its_real_frames(truncated):
    path, real = truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = ClipPairDataset(VideoFolder(path.parent), frames=5, stride=1)[0]
    for clip in sample[:2]:  # the real count wraps: frames 0 1 2 0 1, not 0 1 2 2 2
        assert [_frame_number(f.numpy(), real) for f in clip] == [0, 1, 2, 0, 1]
    assert [f.kind for f in sample[2]] == ["truncated"]


# -- 2. faults travel with the samples ---------------------------------------------------------------------------
def test_faults_of_dataloader_workers_reach_the_main_process(tmp_path, rng):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a.avi", "b.avi", "c.avi"):
        _write_avi(root / name, 6, rng, width=24, height=16)
    _truncate_after(root / "b.avi", 2)
    vf = VideoFolder(root, side=16)
    (root / "a.avi").write_bytes(b"no longer a video")  # breaks after indexing
    ds = ClipPairDataset(vf, frames=3, stride=1, length=6, seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_pairs)
    faults = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q, k, batch_faults in loader:
            assert q.shape == k.shape == (2, 3, 16, 16, 3)
            faults += batch_faults
    assert vf.read_failures == 0  # the workers' counters never come back ...
    unreadable = [f for f in faults if f.kind == "unreadable"]  # ... the records do
    assert [f.path for f in unreadable] == [str(root / "a.avi")] * 2  # samples 0 and 3
    truncated = [f for f in faults if f.kind == "truncated"]
    assert truncated and {f.path for f in truncated} == {str(root / "b.avi")}
    summary = summarize_faults(faults)
    assert summary["by_kind"] == {"truncated": len(truncated), "unreadable": 2}
    json.dumps(summary)


def test_summarize_faults_and_table():
    records = ([VideoFault(f"/data/v{i}.mp4", "unreadable", "InvalidDataError: Invalid data") for i in range(5)]
               + [VideoFault("/data/v0.mp4", "unreadable", "InvalidDataError: Invalid data")]
               + [VideoFault("/data/t.avi", "truncated", "fewer frames decode than claimed; 3 of 10 decode"),
                  VideoFault("/data/u.avi", "truncated", "fewer frames decode than claimed; 7 of 9 decode"),
                  VideoFault("/data/x.mkv", "unreadable", "ValueError: /data/x.mkv: no video stream")])
    summary = summarize_faults(records)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["total"] == 9 and summary["by_kind"] == {"truncated": 2, "unreadable": 7}
    assert summary["reasons"] == [
        {"kind": "unreadable", "reason": "InvalidDataError: Invalid data", "count": 6, "files": 5,
         "examples": ["v0.mp4", "v1.mp4", "v2.mp4"]},
        {"kind": "truncated", "reason": "fewer frames decode than claimed", "count": 2, "files": 2,
         "examples": ["t.avi", "u.avi"]},
        {"kind": "unreadable", "reason": "ValueError: <file>: no video stream", "count": 1, "files": 1,
         "examples": ["x.mkv"]}]
    assert summarize_faults(Counter(records)) == summary  # a running Counter of records gives the same summary
    table = format_fault_table(summary, title="read faults")
    lines = table.splitlines()
    assert lines[0] == "read faults" and lines[1].split() == ["count", "files", "kind", "reason", "examples"]
    assert len(lines) == 5
    assert lines[2].split()[:3] == ["6", "5", "unreadable"] and lines[2].endswith("v0.mp4, v1.mp4, v2.mp4, ...")
    assert format_fault_table(summarize_faults([])) == ""
    with pytest.raises(TypeError, match="summary"):
        format_fault_table(records)
    with pytest.raises(TypeError, match="records"):
        summarize_faults([("a", "b", "c")])


def test_collate_pairs_flattens_faults_and_names_bad_batches():
    clip = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    f1, f2 = VideoFault("a.mp4", "unreadable", "x"), VideoFault("b.avi", "truncated", "y")
    q, k, faults = collate_pairs([(clip, clip, (f1,)), (clip, clip, ()), (clip, clip, (f2, f1))])
    assert q.shape == k.shape == (3, 2, 4, 4, 3) and faults == [f1, f2, f1]
    with pytest.raises(ValueError, match="batch"):
        collate_pairs([(clip, clip)])


# -- 3. the skip table, once ---------------------------------------------------------------------------------------
def test_skip_reasons_warned_once_as_a_table(tmp_path, rng):
    import av

    root = tmp_path / "videos"
    root.mkdir()
    _write_avi(root / "good.avi", 3, rng, width=16, height=16)
    for i in range(4):
        (root / f"bad{i}.mp4").write_bytes(b"not a video " * 50)
    with av.open(str(root / "sound.mkv"), mode="w") as out:  # a container without a video stream
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            out.mux(packet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vf = VideoFolder(root, index_path=False)
    texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(texts) == 1 and len(vf) == 1
    lines = texts[0].splitlines()
    invalid = [line for line in lines if "InvalidDataError: Invalid data found when processing input" in line]
    assert len(invalid) == 1 and invalid[0].split()[:3] == ["4", "4", "skipped"]  # count, files, kind
    assert invalid[0].endswith("bad0.mp4, bad1.mp4, bad2.mp4, ...")  # three examples, then "..."
    no_stream = [line for line in lines if "no video stream" in line]
    assert len(no_stream) == 1 and no_stream[0].split()[:3] == ["1", "1", "skipped"]
    assert no_stream[0].endswith("sound.mkv") and str(root) not in no_stream[0]
    assert texts[0] == vf.skip_table() and texts[0].startswith("VideoFolder: skipped 5 unreadable video(s)")
    assert [f.kind for f in vf.skip_faults()] == ["skipped"] * 5


# -- 4. the torchcodec probe ---------------------------------------------------------------------------------------
class _DecoderThatFails:
    made = 0

    def __init__(self, path):
        type(self).made += 1
        raise RuntimeError("libtorchcodec: FFmpeg libraries not found")


class _DecoderOfWrongShape:
    made = 0

    def __init__(self, path):
        type(self).made += 1

    def get_frames_at(self, indices):
        return types.SimpleNamespace(data=torch.zeros(len(indices), 3, 7, 5, dtype=torch.uint8))


class _DecoderThatWorks:
    made = 0

    def __init__(self, path):
        type(self).made += 1
        self.path = path

    def get_frames_at(self, indices):
        frames = decode._pyav_frames(self.path, np.asarray(indices), None)
        return types.SimpleNamespace(data=torch.from_numpy(frames).permute(0, 3, 1, 2))


def _fake_torchcodec(monkeypatch, decoder):
    decoder.made = 0
    package, decoders = types.ModuleType("torchcodec"), types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = decoder
    package.decoders = decoders
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    monkeypatch.setattr(decode, "_TORCHCODEC_STATE", None, raising=False)  # this process has not probed yet


def _read_clips(paths):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clips = [read_frames(p, idx) for p in paths for idx in ([0, 1], [2, 3], [1, 4])]
    return clips, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("decoder", [_DecoderThatFails, _DecoderOfWrongShape])
def test_torchcodec_that_fails_its_probe_is_dropped_with_one_warning(tmp_path, rng, monkeypatch, decoder):
    paths = [tmp_path / "a.avi", tmp_path / "b.avi"]
    for p in paths:
        _write_avi(p, 5, rng)
    _fake_torchcodec(monkeypatch, decoder)
    clips, messages = _read_clips(paths)
    expected = [decode._pyav_frames(str(p), np.asarray(idx), None) for p in paths for idx in ([0, 1], [2, 3], [1, 4])]
    assert all(np.array_equal(c, e) for c, e in zip(clips, expected))  # PyAV decoded every clip
    assert len(messages) == 1 and "torchcodec" in messages[0] and "PyAV" in messages[0]
    assert decoder.made == 1  # the probe only: never tried again in this process


def test_torchcodec_that_passes_its_probe_is_used(tmp_path, rng, monkeypatch):
    path = tmp_path / "a.avi"
    _write_avi(path, 5, rng)
    _fake_torchcodec(monkeypatch, _DecoderThatWorks)
    clips, messages = _read_clips([path])
    assert messages == [] and _DecoderThatWorks.made == 1 + len(clips)  # the probe, then one per clip
    assert np.array_equal(clips[2], read_all_frames(path)[[1, 4]])


# -- 5. read-only data folders --------------------------------------------------------------------------------------
def _files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def one_video(tmp_path, rng, monkeypatch):
    root = tmp_path / "videos"
    root.mkdir()
    _write_avi(root / "a.avi", 4, rng, width=16, height=16)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return root, cache


def _cached_indexes(cache):
    return sorted((cache / "tdann_fast").glob("index-*.json")) if (cache / "tdann_fast").is_dir() else []


def test_read_only_folder_keeps_its_index_in_the_cache_dir(one_video):
    root, cache = one_video
    before = _files_under(root)
    os.chmod(root, 0o555)  # root's os.access still says writable: the mode decides
    try:
        vf = VideoFolder(root)
        assert vf.frame_counts == [4]
        assert _files_under(root) == before  # nothing written into the user's data folder
        indexes = _cached_indexes(cache)
        assert len(indexes) == 1 and str((root / "a.avi").resolve()) in json.loads(indexes[0].read_text())
        assert VideoFolder(root).frame_counts == [4]  # read back from the cache dir
    finally:
        os.chmod(root, 0o755)


def test_index_goes_to_the_cache_dir_when_writing_it_in_the_folder_fails(one_video):
    root, cache = one_video
    (root / INDEX_NAME).mkdir()  # the folder is writable, but the index cannot be written there
    before = _files_under(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vf = VideoFolder(root)
    assert vf.frame_counts == [4] and _files_under(root) == before  # no temporary file left either
    assert len(_cached_indexes(cache)) == 1


def test_index_not_cached_anywhere_warns_once_and_works(one_video):
    root, cache = one_video
    (root / INDEX_NAME).mkdir()
    cache.write_text("a file where the cache folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vf = VideoFolder(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert vf.frame_counts == [4] and len(messages) == 1 and "not cached" in messages[0]
    assert str(root) in messages[0]

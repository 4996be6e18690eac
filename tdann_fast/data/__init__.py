"""Video data: folders of videos, the embedded default set, synthetic motion, clip augmentation, fault records."""
from .augment import AugmentParams, ClipAugment
from .decode import TruncatedVideoError, VideoReadError, count_frames, read_all_frames, read_frames
from .embedded import EMBEDDED_VIDEO_NAMES, embedded_default, embedded_video_paths, embedded_videos
from .gratings import drifting_gratings
from .pairs import ClipPairDataset, ResumableSampler, collate_pairs
from .synthetic import SyntheticMotion
from .video_folder import (VIDEO_EXTENSIONS, ConcatSource, VideoFault, VideoFolder, format_fault_table,
                           summarize_faults)

__all__ = ["AugmentParams", "ClipAugment", "count_frames", "read_all_frames", "read_frames", "EMBEDDED_VIDEO_NAMES",
           "embedded_default", "embedded_video_paths", "embedded_videos", "drifting_gratings", "ClipPairDataset",
           "ResumableSampler", "collate_pairs", "SyntheticMotion", "VIDEO_EXTENSIONS", "ConcatSource", "VideoFolder",
           "VideoReadError", "TruncatedVideoError", "VideoFault", "summarize_faults", "format_fault_table"]

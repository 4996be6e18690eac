"""Training data: folders of videos and of images, the embedded default sets, synthetic motion, clip and image
augmentation, fault records, grating stimuli, the normalisation constants and the motion directions of a video
source.

Names are imported lazily (``tdann_fast._lazy``): reading the constants of :mod:`tdann_fast.data.normalization`
(as the config does) does not import torch.
"""
from tdann_fast._lazy import lazy_exports

_LAZY = {
    "AugmentParams": "augment", "ClipAugment": "augment", "ImageAugment": "image_augment",
    "EmbeddedImages": "images", "ImageDataset": "images", "ImageFolder": "images", "collate_images": "images",
    "embedded_images": "images",
    "TruncatedVideoError": "decode", "VideoReadError": "decode", "count_frames": "decode",
    "read_all_frames": "decode", "read_frames": "decode",
    "EMBEDDED_VIDEO_NAMES": "embedded", "embedded_default": "embedded", "embedded_video_paths": "embedded",
    "embedded_videos": "embedded",
    "DriftingGratings": "gratings", "StaticGratings": "gratings",
    "KINETICS_MEAN": "normalization", "KINETICS_STD": "normalization", "IMAGENET_MEAN": "normalization",
    "IMAGENET_STD": "normalization",
    "MotionDirections": "motion", "clip_motion": "motion", "frame_displacement": "motion",
    "motion_direction_histogram": "motion",
    "ClipPairDataset": "pairs", "ResumableSampler": "pairs", "collate_pairs": "pairs",
    "SyntheticMotion": "synthetic",
    "VIDEO_EXTENSIONS": "video_folder", "ConcatSource": "video_folder", "VideoFault": "video_folder",
    "VideoFolder": "video_folder", "format_fault_table": "video_folder", "summarize_faults": "video_folder",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

"""Small video files for tests: random-frame AVIs and truncated ones (the header still claims every frame)."""
import numpy as np


def write_video(path, frames, rng, width=48, height=32, fps=10):
    """A video (container from the suffix) of random frames, each different from every other; its header states
    the frame count."""
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def truncate_after(path, keep):
    """Cut the file's bytes where packet ``keep`` starts: the header still claims every frame, ``keep`` decode."""
    import av

    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    with open(path, "r+b") as fh:
        fh.truncate(starts[keep])

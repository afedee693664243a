"""Pictures: 2D/3D skeleton animations (GIF or MP4), training curves are in
``train_loop.plot_curves``, and per-action / per-joint error bar charts."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from rtpca_jax import storage

from rtpca_jax.data.skeleton import H36M17, Layout


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(layout: Layout):
    left, right = set(layout.left), set(layout.right)
    return ["tab:red" if j in right else "tab:blue" if j in left else "0.3" for _, j in layout.edges]


def render_frames(xy_px: np.ndarray, pose3d: np.ndarray, image_size: tuple[int, int], layout: Layout = H36M17,
                  size_px: tuple[int, int] = (640, 320), stride: int = 1) -> list[np.ndarray]:
    """RGB frames ``[H, W, 3]``: the 2D input (left, image coordinates) beside the
    root-relative 3D skeleton (right) from a fixed view.  3D is in the camera
    frame (x right, y down, z forward) and drawn with up = -y."""
    plt = _plt()
    w_img, h_img = image_size
    dpi = 80
    fig = plt.figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    ax2 = fig.add_subplot(1, 2, 1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    colors = _colors(layout)
    rel = pose3d - pose3d[:, layout.root:layout.root + 1]
    radius = max(0.8, float(np.nanmax(np.abs(rel))) * 1.05)
    finite = xy_px[np.isfinite(xy_px).all(-1)]
    lo, hi = (finite.min(0), finite.max(0)) if finite.size else (np.zeros(2), np.array([w_img, h_img]))
    pad = 0.15 * max(hi - lo)
    frames = []
    for t in range(0, len(pose3d), stride):
        ax2.cla()
        ax3.cla()
        for (a, b), col in zip(layout.edges, colors):
            ax2.plot(xy_px[t, [a, b], 0], xy_px[t, [a, b], 1], color=col, lw=2)
            p = rel[t]
            ax3.plot(p[[a, b], 0], p[[a, b], 2], -p[[a, b], 1], color=col, lw=2)
        ax2.set_xlim(lo[0] - pad, hi[0] + pad)
        ax2.set_ylim(hi[1] + pad, lo[1] - pad)
        ax2.set_aspect("equal")
        ax2.set_title(f"2D input, frame {t}", fontsize=9)
        ax2.tick_params(labelsize=6)
        ax3.set_xlim(-radius, radius)
        ax3.set_ylim(-radius, radius)
        ax3.set_zlim(-radius, radius)
        ax3.view_init(elev=12, azim=-75)
        ax3.set_title("3D (root-relative, m)", fontsize=9)
        ax3.tick_params(labelsize=5)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def render_animation(xy_px: np.ndarray, pose3d: np.ndarray, path: str, image_size: tuple[int, int],
                     fps: float = 25.0, layout: Layout = H36M17, size_px=(640, 320), stride: int = 1) -> int:
    """Write a GIF (Pillow) or MP4 (ffmpeg from imageio-ffmpeg); returns the frame count."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".gif", ".mp4"):
        raise ValueError(f"{path}: render to .gif or .mp4")
    frames = render_frames(xy_px, pose3d, image_size, layout, size_px, stride)
    if ext == ".gif":
        import io

        from PIL import Image

        buf = io.BytesIO()
        imgs = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=64) for f in frames]
        imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 * stride / fps),
                     loop=0, optimize=True)
        storage.write_bytes(path, buf.getvalue())
    else:
        import imageio_ffmpeg

        h, w = frames[0].shape[:2]
        with storage.local_output(path) as tmp:  # ffmpeg writes file names only
            writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps / stride, codec="libx264",
                                                 pix_fmt_out="yuv420p", macro_block_size=1)
            writer.send(None)
            for f in frames:
                writer.send(np.ascontiguousarray(f))
            writer.close()
    return len(frames)


def bar_chart(values: dict[str, float], path: str, ylabel: str, title: str,
              secondary: Optional[dict[str, float]] = None, labels: Sequence[str] = ("P1", "P2")) -> None:
    plt = _plt()
    names = list(values)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * len(names) + 2), 3.6))
    width = 0.4 if secondary else 0.7
    ax.bar(x - (width / 2 if secondary else 0), [values[n] for n in names], width, label=labels[0])
    if secondary:
        ax.bar(x + width / 2, [secondary[n] for n in names], width, label=labels[1])
        ax.legend()
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    storage.save_figure(fig, path)
    plt.close(fig)

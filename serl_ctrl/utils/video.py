"""Videos of episodes and rollouts: ``.mp4`` (H.264) or ``.gif``, written atomically.

Why these choices:

* **mp4 = libx264 + yuv420p** because that is what browsers, slide decks and W&B play; the
  price is that yuv420p needs even width and height, so odd-sized frames are padded by one
  replicated row/column here (never rescaled: rescaling blurs the small 128x128 camera
  images we record). imageio-ffmpeg's own ``macro_block_size`` resizing is turned off for
  the same reason.
* **gif** (Pillow through imageio) for places that do not play video (GitHub issues,
  README). GIF stores frame delays in 1/100 s, so ``fps`` above 50 is not representable
  and, e.g., 30 fps becomes 33 ms or 30 ms per frame depending on the viewer. Pillow also
  merges *identical consecutive* frames into one longer frame: the duration is right,
  but a reader may count fewer frames than were written.
* **Atomic** (temporary file with the same suffix, then rename; see
  :mod:`serl_ctrl.utils.atomic`): a killed evaluation never leaves a truncated video
  that looks fine by name.
* Frames are consumed lazily from any iterable, so a long rollout need not be held in
  memory for mp4 (Pillow keeps GIF frames until the end: keep GIFs short).

Typical use::

    ep = load_episode("demos/episode_000000.npz")
    write_video("ep0.mp4", episode_frames(ep), fps=ep.metadata["control_hz"])
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Union

import numpy as np

from serl_ctrl.utils.atomic import atomic_path

if TYPE_CHECKING:  # only for annotations: video must not import the data layer at runtime
    from serl_ctrl.data.episodes import Episode

__all__ = ["VIDEO_SUFFIXES", "caption_height", "episode_frames", "tile_frames", "write_video"]

PathLike = Union[str, "os.PathLike[str]"]

VIDEO_SUFFIXES = (".mp4", ".gif")


def _check_frame(frame: Any, where: str) -> np.ndarray:
    """Accept only uint8 HxWx3: converting floats or grey images silently would hide a bug
    upstream (e.g. a float image in [0, 1] turning black)."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{where}: expected a numpy uint8 array (H, W, 3), got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(
            f"{where}: dtype must be uint8, got {frame.dtype} "
            "(for floats in [0, 1] use (x * 255).round().astype(np.uint8))"
        )
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{where}: shape must be (H, W, 3) with H, W > 0, got {frame.shape}")
    return frame


def _pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")


def write_video(path: PathLike, frames: Iterable[np.ndarray], fps: float = 10) -> Path:
    """Write ``frames`` (uint8 arrays, all the same H x W x 3) to ``path`` (.mp4 or .gif).

    The format is chosen by the suffix (case-insensitive). Raises ``ValueError`` for an
    unknown suffix, ``fps`` <= 0, no frames, or a frame with the wrong dtype/shape (naming
    its index); in every error case nothing is left under ``path`` (an existing file
    there is kept). Returns the path written.
    """
    path = Path(os.fspath(path))
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"write_video: {path}: unknown suffix {path.suffix!r}; use one of {VIDEO_SUFFIXES}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not (
        math.isfinite(fps) and fps > 0
    ):
        raise ValueError(f"write_video: {path}: fps must be a finite number > 0, got {fps!r}")
    fps = float(fps)

    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError(f"write_video: {path}: no frames to write") from None
    first = _check_frame(first, f"write_video: {path}: frame 0")
    shape = first.shape

    def checked() -> Iterator[np.ndarray]:
        yield first
        for i, fr in enumerate(it, start=1):
            fr = _check_frame(fr, f"write_video: {path}: frame {i}")
            if fr.shape != shape:
                raise ValueError(f"write_video: {path}: frame {i} has shape {fr.shape}, frame 0 has {shape}")
            yield fr

    import imageio.v2 as iio2  # imported here: importing serl_ctrl.utils should stay cheap
    import imageio.v3 as iio3

    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            writer = iio2.get_writer(
                tmp,
                format="FFMPEG",
                mode="I",
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=1,  # we pad to even sizes ourselves; never rescale
                ffmpeg_log_level="error",
            )
            # Not ``with writer``: imageio's legacy writer skips close() when the block
            # raises, which leaves ffmpeg running and writing the temporary file *after*
            # it has been removed. Close it ourselves on every path.
            try:
                for fr in checked():
                    writer.append_data(np.ascontiguousarray(_pad_even(fr)))
            except BaseException as err:
                _close_after_error(writer, err)
                raise
            writer.close()
        else:
            duration_ms = 1000.0 / fps
            with iio3.imopen(tmp, "w", plugin="pillow", extension=".gif") as writer:
                for fr in checked():
                    writer.write(fr, is_batch=False, duration=duration_ms, loop=0)
    return path


def _close_after_error(writer: Any, err: BaseException) -> None:
    """Stop the writer (and its ffmpeg process) while ``err`` propagates; a second failure
    while closing is attached to ``err`` as a note instead of replacing it."""
    try:
        writer.close()
    except Exception as close_err:  # the original error is the one to report
        if hasattr(err, "add_note"):
            err.add_note(f"closing the video writer also failed: {close_err!r}")


# --------------------------------------------------------------------------------------
# Tiling and captions


@functools.lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _fits(font: Any, text: str, width: int) -> bool:
    return font.getlength(text) <= width


def _encodable(font: Any, text: str) -> str:
    """Pillow's bitmap fallback font (when FreeType is missing) only encodes Latin-1;
    replace what it cannot draw with '?' rather than crash a whole video on one character."""
    from PIL import ImageFont

    if isinstance(font, ImageFont.ImageFont):
        return text.encode("latin-1", "replace").decode("latin-1")
    return text


def _wrap(font: Any, text: str, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; over-long words are cut by characters; text
    beyond ``max_lines`` is elided with '...' so that the band height stays fixed."""
    lines: list[str] = []
    words = text.split()
    cur = ""
    while words:
        w = words[0]
        cand = f"{cur} {w}" if cur else w
        if _fits(font, cand, width):
            cur = cand
            words.pop(0)
            continue
        if not cur:  # a single word wider than the band: cut it
            n = len(w)
            while n > 1 and not _fits(font, w[:n], width):
                n -= 1
            cur, words[0] = w[:n], w[n:]
            if not words[0]:
                words.pop(0)
        lines.append(cur)
        cur = ""
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and not _fits(font, last + "...", width):
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def caption_height(lines: int = 2) -> int:
    """Height in pixels of the caption band that :func:`tile_frames` adds for ``lines``."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bbox = draw.textbbox((0, 0), "Ag|", font=_font())
    return lines * (bbox[3] + 2) + 4


def tile_frames(
    frames: Mapping[str, np.ndarray],
    caption: str | None = None,
    *,
    caption_lines: int = 2,
) -> np.ndarray:
    """Put camera images side by side (in mapping order), with an optional caption below.

    Images of different heights are top-aligned and padded with black at the bottom (not
    rescaled, so pixels stay as recorded). The caption goes in a black band of fixed
    height (``caption_lines`` lines, see :func:`caption_height`) *under* the images rather
    than over them, so it hides nothing of the small camera images, and every frame of a
    video has the same size whatever the caption's length; longer text is wrapped and
    then elided with '...'. Pillow's default font is used.
    """
    if not isinstance(frames, Mapping) or not frames:
        raise ValueError("tile_frames: expected a non-empty mapping of name -> uint8 (H, W, 3) image")
    imgs = [_check_frame(v, f"tile_frames: image {k!r}") for k, v in frames.items()]
    height = max(im.shape[0] for im in imgs)
    width = sum(im.shape[1] for im in imgs)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for im in imgs:
        out[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1]
    if caption is None:
        return out
    if not isinstance(caption, str):
        raise TypeError(f"tile_frames: caption must be a str or None, got {type(caption).__name__}")
    if caption_lines < 1:
        raise ValueError(f"tile_frames: caption_lines must be >= 1, got {caption_lines}")

    from PIL import Image, ImageDraw

    font = _font()
    band_h = caption_height(caption_lines)
    line_h = (band_h - 4) // caption_lines
    band = Image.new("RGB", (width, band_h), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(_wrap(font, _encodable(font, caption), max(1, width - 4), caption_lines)):
        draw.text((2, 2 + i * line_h), line, fill=(255, 255, 255), font=font)
    return np.concatenate([out, np.asarray(band, dtype=np.uint8)], axis=0)


def _default_caption(episode: "Episode", t: int) -> str:
    """``step t/T: <instruction>`` plus markers. Frame 0 (after reset) shows the first
    step's instruction, i.e. what the robot is about to do; frame t >= 1 shows the step
    that produced it."""
    T = episode.length
    s = max(t - 1, 0)
    text = f"step {t}/{T}: {episode.instructions[s] or '(no instruction)'}"
    if t > 0 and episode.intervened[s]:
        text += " [human]"
    if t > 0 and episode.success[s]:
        text += " [success]"
    return text


def episode_frames(
    episode: "Episode",
    keys: Iterable[str] | None = None,
    caption: bool | Callable[["Episode", int], str] = True,
    *,
    caption_lines: int = 2,
) -> Iterator[np.ndarray]:
    """Yield ``T + 1`` tiled frames from an episode's image observations.

    ``keys`` picks and orders the cameras (default: every uint8 (T+1, H, W, 3) observation,
    in the episode's order). ``caption``: True for the default ``step t/T: instruction``
    (with ``[human]`` / ``[success]`` markers), False for none, or a function
    ``(episode, t) -> str``. Frames are produced lazily, one at a time.
    """
    if keys is None:
        keys = episode.image_keys
        if not keys:
            shapes = {k: v.shape for k, v in episode.observations.items()}
            raise ValueError(f"episode_frames: the episode has no image observations (uint8 (T+1, H, W, 3)): {shapes}")
    else:
        keys = list(keys)
        if not keys:
            raise ValueError("episode_frames: keys is empty")
        for k in keys:
            if k not in episode.observations:
                raise ValueError(f"episode_frames: no observation {k!r}; have {sorted(episode.observations)}")
            v = episode.observations[k]
            if not (v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3):
                raise ValueError(
                    f"episode_frames: observation {k!r} is not an RGB image stream "
                    f"(need uint8 (T+1, H, W, 3), got {v.dtype} {v.shape})"
                )
    if caption is True:
        make_caption: Callable[["Episode", int], str] | None = _default_caption
    elif caption is False or caption is None:
        make_caption = None
    elif callable(caption):
        make_caption = caption
    else:
        raise TypeError(f"episode_frames: caption must be a bool or a function (episode, t) -> str, got {caption!r}")

    for t in range(episode.length + 1):
        text = make_caption(episode, t) if make_caption is not None else None
        yield tile_frames({k: episode.observations[k][t] for k in keys}, text, caption_lines=caption_lines)

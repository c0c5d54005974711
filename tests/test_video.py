"""Tests for serl_ctrl.utils.video: mp4/gif writing, tiling, captions, episode frames."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import imageio.v3 as iio3
import imageio_ffmpeg
import numpy as np
import pytest

from serl_ctrl.data.episodes import Episode, make_metadata
from serl_ctrl.utils.video import caption_height, episode_frames, tile_frames, write_video

REPO = Path(__file__).resolve().parents[1]

# imageio-ffmpeg's *reader* (used here only to check our files) leaves its pipes for the
# garbage collector; test_writer_leaks_nothing checks that our writer does not.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """Distinct, smooth frames (a bright bar moving right) that survive lossy coding."""
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 30, np.uint8)
        x = (i * 3) % max(1, w - 6)
        f[:, x : x + 6] = (230, 200, 40)
        out.append(f)
    return out


def _read_mp4_with_meta(path) -> tuple[np.ndarray, dict]:
    """Decode with imageio-ffmpeg's generator (imageio's v2 reader leaks its pipes)."""
    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    finally:
        gen.close()
    return np.stack(frames), meta


def _read_mp4(path) -> np.ndarray:
    return _read_mp4_with_meta(path)[0]


def _read_gif(path) -> np.ndarray:
    return iio3.imread(path, index=None, plugin="pillow", mode="RGB")


def test_mp4_round_trip(tmp_path):
    frames = _frames(12, 64, 96)
    p = write_video(tmp_path / "a.mp4", frames, fps=10)
    assert p == tmp_path / "a.mp4"
    back, meta = _read_mp4_with_meta(p)
    assert back.shape == (12, 64, 96, 3)
    # lossy, but the picture is the same
    assert np.abs(back.astype(int) - np.stack(frames).astype(int)).mean() < 6
    assert meta["fps"] == pytest.approx(10)
    assert meta["codec"].startswith("h264")
    assert "yuv420p" in meta["pix_fmt"]
    assert [x.name for x in tmp_path.iterdir()] == ["a.mp4"]  # no temp file left


def test_mp4_odd_size_is_padded_to_even_not_rescaled(tmp_path):
    frames = _frames(5, 33, 47)
    back = _read_mp4(write_video(tmp_path / "odd.MP4", iter(frames), fps=5))
    assert back.shape == (5, 34, 48, 3)
    # original pixels kept in place (padding is one replicated row/column at the end)
    assert np.abs(back[:, :33, :47].astype(int) - np.stack(frames).astype(int)).mean() < 6


def test_gif_round_trip(tmp_path):
    frames = _frames(7, 40, 50)
    p = write_video(tmp_path / "a.gif", frames, fps=10)
    back = _read_gif(p)
    assert back.shape == (7, 40, 50, 3)
    assert iio3.immeta(p, plugin="pillow")["duration"] == 100
    # 3 colours only: GIF palette quantisation is exact here
    np.testing.assert_array_equal(back, np.stack(frames))


@pytest.mark.parametrize("name", ["a.avi", "a", "a.mp4.tmp", "a.png"])
def test_unknown_suffix(tmp_path, name):
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / name, _frames(2, 8, 8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_empty_frames(tmp_path, suffix):
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / f"a{suffix}", iter([]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1, float("nan"), "10"])
def test_bad_fps(tmp_path, fps):
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", _frames(2, 8, 8), fps=fps)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((16, 16, 3), np.float32), "frame 3: dtype"),
        (np.zeros((16, 16), np.uint8), r"frame 3: shape"),
        (np.zeros((8, 16, 3), np.uint8), r"frame 3 has shape"),
    ],
)
def test_bad_frame_mid_stream_leaves_existing_file(tmp_path, suffix, bad, match):
    p = tmp_path / f"a{suffix}"
    p.write_bytes(b"previous video")
    frames = _frames(3, 16, 16) + [bad] + _frames(2, 16, 16)
    with pytest.raises(ValueError, match=match):
        write_video(p, frames)
    assert p.read_bytes() == b"previous video"
    assert [x.name for x in tmp_path.iterdir()] == [p.name]


def test_tile_frames_different_heights():
    a = np.full((10, 4, 3), 50, np.uint8)
    b = np.full((6, 3, 3), 200, np.uint8)
    t = tile_frames({"a": a, "b": b})
    assert t.shape == (10, 7, 3) and t.dtype == np.uint8
    np.testing.assert_array_equal(t[:, :4], a)
    np.testing.assert_array_equal(t[:6, 4:], b)
    assert (t[6:, 4:] == 0).all()  # black padding below the shorter image
    t2 = tile_frames({"b": b, "a": a})
    np.testing.assert_array_equal(t2[:6, :3], b)  # mapping order is tile order


def test_tile_frames_caption_band_fixed_height():
    imgs = {"front": np.zeros((64, 64, 3), np.uint8), "wrist": np.zeros((48, 64, 3), np.uint8)}
    short = tile_frames(imgs, "pick")
    long = tile_frames(imgs, "pick up the red cube and put it in the bowl near the left edge " * 5)
    empty = tile_frames(imgs, "")
    h = 64 + caption_height(2)
    assert short.shape == long.shape == empty.shape == (h, 128, 3)
    assert short[64:].max() > 100  # text was drawn
    assert (empty[64:] == 0).all()
    assert (short[:64] == 0).all()  # the caption does not cover the images
    one = tile_frames(imgs, "pick", caption_lines=1)
    assert one.shape == (64 + caption_height(1), 128, 3) and caption_height(1) < caption_height(2)
    tile_frames(imgs, "déplacer à gauche → ☺")  # non-Latin-1 text does not crash


def test_tile_frames_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        tile_frames({})
    with pytest.raises(ValueError, match="'front'.*uint8"):
        tile_frames({"front": np.zeros((4, 4, 3), np.float32)})


def _episode(T: int = 5) -> Episode:
    rng = np.random.default_rng(0)
    success = np.zeros(T, bool)
    success[-1] = True
    return Episode(
        observations={
            "front": rng.integers(0, 256, (T + 1, 32, 32, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (T + 1, 24, 20, 3), dtype=np.uint8),
            "tcp_pose": np.zeros((T + 1, 7), np.float32),
        },
        actions=np.zeros((T, 2), np.float32),
        rewards=np.zeros(T, np.float32),
        terminated=success.copy(),
        truncated=np.zeros(T, bool),
        success=success,
        instructions=["reach"] * T,
        metadata=make_metadata(
            task="reach", backend="mujoco", obs_mode="pixels", seed=0, control_hz=10, action_low=[-1, -1], action_high=[1, 1]
        ),
    )


def test_episode_frames():
    ep = _episode()
    frames = list(episode_frames(ep))
    assert len(frames) == ep.length + 1
    assert {f.shape for f in frames} == {(32 + caption_height(2), 52, 3)}
    np.testing.assert_array_equal(frames[2][:32, :32], ep.observations["front"][2])
    np.testing.assert_array_equal(frames[2][:24, 32:], ep.observations["wrist"][2])

    plain = list(episode_frames(ep, keys=["wrist"], caption=False))
    assert len(plain) == 6 and plain[0].shape == (24, 20, 3)
    np.testing.assert_array_equal(plain[4], ep.observations["wrist"][4])

    seen = []
    list(episode_frames(ep, keys=["front"], caption=lambda e, t: seen.append(t) or f"t={t}"))
    assert seen == list(range(6))


def test_episode_frames_errors():
    ep = _episode()
    with pytest.raises(ValueError, match="no observation 'side'"):
        list(episode_frames(ep, keys=["side"]))
    with pytest.raises(ValueError, match="'tcp_pose' is not an RGB image"):
        list(episode_frames(ep, keys=["tcp_pose"]))
    del ep.observations["front"], ep.observations["wrist"]
    with pytest.raises(ValueError, match="no image observations"):
        list(episode_frames(ep))


def test_episode_to_mp4(tmp_path):
    ep = _episode(T=8)
    p = write_video(tmp_path / "ep.mp4", episode_frames(ep), fps=ep.metadata["control_hz"])
    back = _read_mp4(p)
    assert back.shape == (9, 32 + caption_height(2), 52, 3)


def test_writer_leaks_nothing(tmp_path):
    """No ffmpeg pipe or file handle is left open, on success or on a bad frame
    (checked in a fresh interpreter with every warning, ResourceWarning included, an error)."""
    script = textwrap.dedent(
        f"""
        import gc, sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from serl_ctrl.utils.video import write_video
        frames = [np.full((33, 47, 3), i, np.uint8) for i in range(5)]
        for suffix in (".mp4", ".gif"):
            write_video({str(tmp_path)!r} + "/ok" + suffix, frames)
            try:
                write_video({str(tmp_path)!r} + "/bad" + suffix, frames + [np.zeros((2, 2, 3), np.uint8)])
            except ValueError:
                pass
            else:
                raise SystemExit("bad frame accepted")
        gc.collect()
        """
    )
    r = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.gif", "ok.mp4"]

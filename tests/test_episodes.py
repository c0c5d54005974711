"""Tests for the episode format (serl_ctrl.data.episodes) and atomic writes (serl_ctrl.utils.atomic)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from serl_ctrl.data import episodes as E
from serl_ctrl.data.episodes import (
    Episode,
    EpisodeFormatError,
    EpisodeRecorder,
    list_episodes,
    load_episode,
    load_episodes,
    make_metadata,
    save_episode,
    summarize,
    write_episodes_dir,
)
from serl_ctrl.utils.atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _metadata(**extra):
    return make_metadata(
        task="pick",
        backend="mujoco",
        obs_mode="state+pixels",
        seed=3,
        control_hz=10,
        action_low=-np.ones(4),
        action_high=np.ones(4),
        **extra,
    )


def _smooth_images(T: int, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Rendered-looking frames: flat background plus a moving square (compressible)."""
    imgs = np.empty((T + 1, size, size, 3), np.uint8)
    imgs[:] = (40, 60, 90)
    for t in range(T + 1):
        x = (5 + 3 * t) % (size - 16)
        imgs[t, 50:66, x : x + 16] = (200, 30, 30)
    imgs[:, : size // 4] = (120, 120, 110)
    return imgs


def make_episode(T: int = 6, seed: int = 0, images: bool = True, img_size: int = 16) -> Episode:
    rng = np.random.default_rng(seed)
    obs = {
        "tcp_pose": rng.normal(size=(T + 1, 7)).astype(np.float32),
        "tcp_vel": rng.normal(size=(T + 1, 6)).astype(np.float32),
        "gripper": rng.random((T + 1, 1)).astype(np.float32),
        "cube_pos": rng.normal(size=(T + 1, 3)).astype(np.float32),
    }
    if images:
        obs["front"] = rng.integers(0, 256, (T + 1, img_size, img_size, 3), dtype=np.uint8)
        obs["wrist"] = rng.integers(0, 256, (T + 1, img_size, img_size, 3), dtype=np.uint8)
    success = np.zeros(T, bool)
    success[-1] = True
    terminated = success.copy()
    instr = ["pick up the cube"] * (T // 2) + ["", "lift ☺ "] + ["place"] * (T - T // 2 - 2)
    intervened = np.zeros(T, bool)
    intervened[1] = True
    return Episode(
        observations=obs,
        actions=rng.uniform(-1, 1, (T, 4)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(T, bool),
        success=success,
        instructions=instr,
        intervened=intervened,
        metadata=_metadata(),
    )


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    assert list(a.observations) == list(b.observations)
    for k in a.observations:
        assert a.observations[k].dtype == b.observations[k].dtype, k
        np.testing.assert_array_equal(a.observations[k], b.observations[k], err_msg=k)
    for f in ("actions", "rewards", "terminated", "truncated", "success", "intervened"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        np.testing.assert_array_equal(x, y, err_msg=f)
    assert a.instructions == b.instructions
    assert a.metadata == b.metadata


def _arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite(path: Path, arrays: dict[str, np.ndarray], **kw) -> None:
    """Write a hand-made (possibly invalid) episode file with plain numpy."""
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays, **kw)


# ---------------------------------------------------------------------------- round trip


def test_round_trip_keeps_every_field_and_dtype(tmp_path):
    ep = make_episode()
    p = save_episode(tmp_path / "ep.npz", ep)
    back = load_episode(p)
    assert_episodes_equal(ep, back)
    assert back.length == 6 and back.is_success and back.total_reward == pytest.approx(float(ep.rewards.sum(dtype=np.float64)))
    assert back.image_keys == ["front", "wrist"]
    assert back.instructions[4] == "lift ☺ "  # unicode and trailing space survive


def test_on_disk_layout_is_plain_numpy(tmp_path):
    """What docs/episode_format.md promises: keys, dtypes, shapes, no object arrays."""
    ep = make_episode(T=5)
    p = save_episode(tmp_path / "ep.npz", ep)
    raw = _arrays_of(p)  # allow_pickle=False: would raise on any object array
    assert set(raw) == {
        "obs/tcp_pose", "obs/tcp_vel", "obs/gripper", "obs/cube_pos", "obs/front", "obs/wrist",
        "action", "reward", "terminated", "truncated", "success", "intervened", "instruction", "metadata",
    }
    assert raw["obs/front"].shape == (6, 16, 16, 3) and raw["obs/front"].dtype == np.uint8
    assert raw["action"].dtype == np.float32 and raw["action"].shape == (5, 4)
    assert raw["reward"].dtype == np.float32
    for k in ("terminated", "truncated", "success", "intervened"):
        assert raw[k].dtype == np.bool_ and raw[k].shape == (5,)
    assert raw["instruction"].dtype.kind == "U" and raw["instruction"].shape == (5,)
    assert raw["metadata"].dtype.kind == "U" and raw["metadata"].shape == ()
    md = json.loads(raw["metadata"].item())
    assert md["format_version"] == 1 and md["task"] == "pick"
    # It is a zip of compressed .npy members.
    with zipfile.ZipFile(p) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
        assert "obs/front.npy" in zf.namelist()


def test_metadata_json_round_trip(tmp_path):
    extra = {
        "operator": "Zoë",
        "notes": None,
        "camera": {"front": {"fov": 45.0, "serial": "123"}, "ids": [1, 2, 3]},
        "flag": True,
        "gain": 1.0,
        "count": 2,
    }
    ep = make_episode()
    ep.metadata = _metadata(**extra)
    back = load_episode(save_episode(tmp_path / "ep.npz", ep))
    assert back.metadata == ep.metadata
    assert type(back.metadata["gain"]) is float and type(back.metadata["count"]) is int
    assert back.metadata["camera"]["ids"] == [1, 2, 3]
    assert back.metadata["seed"] == 3 and back.metadata["action_low"] == [-1.0] * 4


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"pair": (1, 2)}, "pair"),  # tuple would come back as a list
        ({"x": np.float32(1.0)}, "'x'"),
        ({"x": float("nan")}, "'x'"),
        ({"d": {1: "a"}}, "'d'"),
    ],
)
def test_metadata_that_would_not_round_trip_is_rejected(bad, field):
    with pytest.raises(ValueError, match=field):
        _metadata(**bad)


def test_make_metadata_fills_required_keys():
    md = _metadata()
    assert set(E.REQUIRED_METADATA) <= set(md)
    from serl_ctrl import __version__

    assert md["serl_ctrl_version"] == __version__
    assert md["format_version"] == E.FORMAT_VERSION
    with pytest.raises(ValueError, match="control_hz"):
        make_metadata(task="t", backend="b", obs_mode="o", seed=None, control_hz=0, action_low=[0], action_high=[1])
    with pytest.raises(ValueError, match="action_low"):
        make_metadata(task="t", backend="b", obs_mode="o", seed=None, control_hz=5, action_low=[2], action_high=[1])


# ----------------------------------------------------------------------- save validation


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_rejected_at_save(tmp_path, bad):
    ep = make_episode()
    ep.actions[2, 1] = bad
    p = tmp_path / "ep.npz"
    with pytest.raises(EpisodeFormatError, match=r"actions.*non-finite.*\(2, 1\)") as ei:
        save_episode(p, ep)
    assert str(p) in str(ei.value)
    assert not p.exists() and list(tmp_path.iterdir()) == []


def _mutations():
    def set_(attr, value):
        def f(ep):
            setattr(ep, attr, value(ep))
        return f

    return [
        ("actions", set_("actions", lambda ep: ep.actions[:, 0].copy())),  # 1-D
        ("actions", set_("actions", lambda ep: ep.actions.astype(np.float64))),
        ("rewards", set_("rewards", lambda ep: ep.rewards[:-1].copy())),
        ("rewards", set_("rewards", lambda ep: np.full(ep.length, np.nan, np.float32))),
        ("terminated", set_("terminated", lambda ep: ep.terminated.astype(np.int8))),
        ("success", set_("success", lambda ep: ep.success[:-1])),
        ("intervened", set_("intervened", lambda ep: np.zeros(ep.length + 1, bool))),
        ("instructions", set_("instructions", lambda ep: ep.instructions[:-1])),
        ("instructions", set_("instructions", lambda ep: ["a\x00"] * ep.length)),
        ("tcp_pose", lambda ep: ep.observations.__setitem__("tcp_pose", ep.observations["tcp_pose"][:-1])),
        ("front", lambda ep: ep.observations.__setitem__("front", ep.observations["front"].astype(object))),
        ("metadata", lambda ep: ep.metadata.pop("task")),
        ("action_low", lambda ep: ep.metadata.__setitem__("action_low", [0.0, 0.0])),
    ]


@pytest.mark.parametrize("name, mutate", _mutations(), ids=[m[0] + str(i) for i, m in enumerate(_mutations())])
def test_invalid_episode_rejected_before_writing(tmp_path, name, mutate):
    ep = make_episode()
    mutate(ep)
    p = tmp_path / "ep.npz"
    with pytest.raises(EpisodeFormatError, match=name):
        save_episode(p, ep)
    assert list(tmp_path.iterdir()) == []


def test_save_requires_npz_suffix(tmp_path):
    with pytest.raises(EpisodeFormatError, match=r"\.npz"):
        save_episode(tmp_path / "ep.npy", make_episode())


def test_intervened_defaults_to_all_false():
    ep = make_episode()
    ep2 = Episode(ep.observations, ep.actions, ep.rewards, ep.terminated, ep.truncated, ep.success, ep.instructions, metadata=ep.metadata)
    assert ep2.intervened.dtype == np.bool_ and ep2.intervened.shape == (ep.length,) and not ep2.intervened.any()
    ep2.validate()


# ---------------------------------------------------------------------------- atomicity


def test_crash_mid_write_leaves_no_file_under_final_name(tmp_path, monkeypatch):
    p = tmp_path / "ep.npz"

    def crashing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(E.np, "savez_compressed", crashing_savez)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_episode(p, make_episode())
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temp file


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "ep.npz"
    old = make_episode(seed=1)
    save_episode(p, old)

    def crashing_savez(f, **arrays):
        f.write(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(E.np, "savez_compressed", crashing_savez)
    with pytest.raises(KeyboardInterrupt):
        save_episode(p, make_episode(seed=2))
    assert [x.name for x in tmp_path.iterdir()] == ["ep.npz"]
    assert_episodes_equal(load_episode(p), old)


def test_failed_rename_cleans_up(tmp_path, monkeypatch):
    import serl_ctrl.utils.atomic as A

    def bad_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(A.os, "replace", bad_replace)
    with pytest.raises(OSError, match="disk gone"):
        save_episode(tmp_path / "ep.npz", make_episode())
    assert list(tmp_path.iterdir()) == []


def test_killed_process_leaves_only_a_hidden_temp_file(tmp_path):
    """A hard kill (no cleanup runs) mid-write: the final name never appears, and the
    leftover temp file is not listed as an episode."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from serl_ctrl.data import episodes as E
        from test_episodes import make_episode
        def die(f, **arrays):
            f.write(b"PK partial")
            f.flush()
            os._exit(9)
        E.np.savez_compressed = die
        E.save_episode({str(tmp_path / "episode_000001.npz")!r}, make_episode())
        """
    )
    save_episode(tmp_path / "episode_000000.npz", make_episode())
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    names = sorted(x.name for x in tmp_path.iterdir())
    assert "episode_000001.npz" not in names
    leftovers = [n for n in names if n.startswith(".")]
    assert len(leftovers) == 1 and ".tmp" in leftovers[0]
    assert list_episodes(tmp_path) == [tmp_path / "episode_000000.npz"]
    assert len(load_episodes(tmp_path)) == 1


def test_atomic_helpers(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "a.txt", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\x01"
    with atomic_path(tmp_path / "v.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp.name.startswith(".")
        tmp.write_bytes(b"xyz")
        assert not (tmp_path / "v.bin").exists()
    assert (tmp_path / "v.bin").read_bytes() == b"xyz"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "v.bin"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"")
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "ab"):
            pass


def test_fsync_dir_tolerates_only_unsupported(tmp_path, monkeypatch):
    import errno

    import serl_ctrl.utils.atomic as A

    if os.name == "nt":
        pytest.skip("no folder fsync on Windows")

    def fsync_fails(code):
        def f(fd):
            raise OSError(code, os.strerror(code))
        return f

    monkeypatch.setattr(A.os, "fsync", fsync_fails(errno.EINVAL))
    A.fsync_dir(tmp_path)  # a file system that cannot fsync folders: not an error
    monkeypatch.setattr(A.os, "fsync", fsync_fails(errno.EIO))
    with pytest.raises(OSError):
        A.fsync_dir(tmp_path)  # a real I/O error is reported


def test_atomic_write_uses_umask_permissions(tmp_path):
    if os.name == "nt":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "p.bin", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "p.bin").stat().st_mode & 0o777 == 0o644


# -------------------------------------------------------------------- load validation


def _valid_file(tmp_path: Path) -> Path:
    return save_episode(tmp_path / "ep.npz", make_episode())


@pytest.mark.parametrize("keep", [0, 1, 30, 0.5, -22])
def test_truncated_file_raises_format_error_naming_path(tmp_path, keep):
    p = _valid_file(tmp_path)
    data = p.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    p.write_bytes(data[:n])
    with pytest.raises(EpisodeFormatError) as ei:
        load_episode(p)
    assert str(p) in str(ei.value)


def _member_data_span(path: Path, member: str) -> tuple[int, int]:
    """(offset, length) of a zip member's compressed bytes in the file."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    # The local header's extra field (zip64) differs from the central directory's: read it.
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("member", ["obs/front.npy", "action.npy"])
def test_corrupted_member_data_raises_format_error(tmp_path, member, where):
    """One flipped bit inside a member's compressed bytes (caught by zlib or the zip CRC)."""
    p = _valid_file(tmp_path)
    start, size = _member_data_span(p, member)
    data = bytearray(p.read_bytes())
    data[start + int(where * size)] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(EpisodeFormatError, match=member[: -len(".npy")]) as ei:
        load_episode(p)
    assert str(p) in str(ei.value)


def test_any_flipped_bit_is_an_error_or_harmless(tmp_path):
    """Flip each byte of the 'action' member in turn: load either raises or returns the
    exact original data. (A few bits do not change the content, e.g. the deflate
    final-block flag or padding after the end-of-block code; nothing may be wrong data.)"""
    ep = make_episode()
    p = save_episode(tmp_path / "ep.npz", ep)
    good = p.read_bytes()
    start, size = _member_data_span(p, "action.npy")
    errors = 0
    for i in range(start, start + size):
        data = bytearray(good)
        data[i] ^= 0x5A
        p.write_bytes(bytes(data))
        try:
            back = load_episode(p)
        except EpisodeFormatError:
            errors += 1
        else:
            assert_episodes_equal(ep, back)
    assert errors >= size - 4


@pytest.mark.parametrize("content", [b"", b"not a zip at all" * 10])
def test_garbage_file_raises_format_error(tmp_path, content):
    p = tmp_path / "ep.npz"
    p.write_bytes(content)
    with pytest.raises(EpisodeFormatError, match="ep.npz"):
        load_episode(p)


def test_plain_npy_is_not_an_episode(tmp_path):
    p = tmp_path / "ep.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(EpisodeFormatError, match="not a readable .npz"):
        load_episode(p)


def test_non_npy_member_rejected(tmp_path):
    p = _valid_file(tmp_path)
    with zipfile.ZipFile(p, "a") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(EpisodeFormatError, match="notes.txt.*unexpected"):
        load_episode(p)


def test_uncompressed_npz_is_accepted(tmp_path):
    """np.savez (stored, not deflated) gives the same layout; readers accept it."""
    ep = make_episode()
    p = save_episode(tmp_path / "ep.npz", ep)
    raw = _arrays_of(p)
    with open(p, "wb") as f:
        np.savez(f, **raw)
    with zipfile.ZipFile(p) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert_episodes_equal(load_episode(p), ep)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_episode(tmp_path / "nope.npz")


@pytest.mark.parametrize("key", ["reward", "instruction", "metadata", "intervened", "action"])
def test_missing_key_named(tmp_path, key):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    del raw[key]
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match=f"{key}: missing key") as ei:
        load_episode(p)
    assert str(p) in str(ei.value)


def test_missing_observations(tmp_path):
    p = _valid_file(tmp_path)
    raw = {k: v for k, v in _arrays_of(p).items() if not k.startswith("obs/")}
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match="no observation keys"):
        load_episode(p)


def test_unexpected_key_named(tmp_path):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw["next_obs"] = np.zeros(3)
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match="next_obs"):
        load_episode(p)


@pytest.mark.parametrize(
    "key, change",
    [
        ("reward", lambda a: a[:-1]),
        ("terminated", lambda a: np.concatenate([a, a])),
        ("obs/front", lambda a: a[:-1]),
        ("obs/tcp_pose", lambda a: a[1:]),
        ("instruction", lambda a: a[:-1]),
    ],
)
def test_length_mismatch_named(tmp_path, key, change):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw[key] = change(raw[key])
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match=key) as ei:
        load_episode(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize(
    "key, change",
    [
        ("action", lambda a: a.astype(np.float64)),
        ("reward", lambda a: a.astype(np.float64)),
        ("success", lambda a: a.astype(np.uint8)),
        ("instruction", lambda a: np.arange(len(a))),
        ("metadata", lambda a: np.array([a.item()])),
    ],
)
def test_wrong_dtype_named(tmp_path, key, change):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw[key] = change(raw[key])
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match=key):
        load_episode(p)


def test_object_arrays_are_never_unpickled(tmp_path):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw["instruction"] = np.array(list(raw["instruction"]), dtype=object)
    _rewrite(p, raw)  # np.savez pickles object arrays
    with pytest.raises(EpisodeFormatError, match="instruction"):
        load_episode(p)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_format_version(tmp_path, version):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    md = json.loads(raw["metadata"].item())
    md["format_version"] = version
    raw["metadata"] = np.array(json.dumps(md))
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match="format_version"):
        load_episode(p)


def test_bad_metadata_json(tmp_path):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw["metadata"] = np.array("{not json")
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match="metadata.*JSON"):
        load_episode(p)


def test_nan_action_in_file_rejected_on_load(tmp_path):
    p = _valid_file(tmp_path)
    raw = _arrays_of(p)
    raw["action"][0, 0] = np.nan
    _rewrite(p, raw)
    with pytest.raises(EpisodeFormatError, match="action.*non-finite"):
        load_episode(p)


# ------------------------------------------------------------------------------ recorder


class ReusingEnv:
    """Returns the *same* obs dict and arrays every step, mutated in place (like many envs)."""

    def __init__(self):
        self.obs = {"tcp_pose": np.zeros(7, np.float32), "front": np.zeros((8, 8, 3), np.uint8)}
        self.t = 0

    def reset(self):
        self.t = 0
        self.obs["tcp_pose"][:] = 0
        self.obs["front"][:] = 0
        return self.obs

    def step(self, action):
        self.t += 1
        self.obs["tcp_pose"][:] = self.t
        self.obs["front"][:] = self.t
        done = self.t == 4
        return self.obs, 0.5, done, False, {"success": np.bool_(done), "intervened": self.t == 2}


def test_recorder_copies_buffers():
    env = ReusingEnv()
    rec = EpisodeRecorder(_metadata())
    rec.reset(env.reset())
    action = np.zeros(4)
    while True:
        action[:] = env.t + 10  # the policy also reuses its action buffer
        obs, r, term, trunc, info = env.step(action)
        rec.step(action, obs, r, term, trunc, info, instruction=f"seg{env.t // 3}")
        if term or trunc:
            break
    ep = rec.finish()
    assert ep.length == 4 and rec.num_steps == 0 and not rec.in_progress
    np.testing.assert_array_equal(ep.observations["tcp_pose"][:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ep.observations["front"][:, 0, 0, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ep.actions[:, 0], [10, 11, 12, 13])
    assert ep.actions.dtype == np.float32 and ep.rewards.dtype == np.float32
    np.testing.assert_array_equal(ep.intervened, [False, True, False, False])
    np.testing.assert_array_equal(ep.success, [False, False, False, True])
    np.testing.assert_array_equal(ep.terminated, [False, False, False, True])
    assert ep.instructions == ["seg0", "seg0", "seg1", "seg1"]
    assert ep.is_success and ep.total_reward == pytest.approx(2.0)


def test_recorder_metadata_is_copied():
    md = _metadata(tags=["a"])
    rec = EpisodeRecorder(md)
    md["tags"].append("b")
    rec.reset({"x": np.zeros(2)})
    rec.step(np.zeros(4), {"x": np.ones(2)}, 0.0, True, False, {"success": True})
    assert rec.finish().metadata["tags"] == ["a"]


def _rec_started():
    rec = EpisodeRecorder(_metadata())
    rec.reset({"x": np.zeros(2, np.float32)})
    return rec


def test_recorder_errors_name_the_problem():
    with pytest.raises(ValueError, match="task"):
        EpisodeRecorder({"format_version": 1})
    rec = EpisodeRecorder(_metadata())
    with pytest.raises(RuntimeError, match="reset"):
        rec.step(np.zeros(4), {"x": np.zeros(2)}, 0.0, False, False, {"success": False})
    with pytest.raises(RuntimeError, match="reset"):
        rec.finish()

    rec = _rec_started()
    with pytest.raises(ValueError, match="success"):
        rec.step(np.zeros(4), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {})
    with pytest.raises(ValueError, match=r"step 0.*'x'.*float64"):
        rec.step(np.zeros(4), {"x": np.zeros(2)}, 0.0, False, False, {"success": False})
    with pytest.raises(ValueError, match="keys"):
        rec.step(np.zeros(4), {"y": np.zeros(2, np.float32)}, 0.0, False, False, {"success": False})
    with pytest.raises(ValueError, match="non-finite"):
        rec.step(np.array([0, np.nan, 0, 0]), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {"success": False})
    with pytest.raises(ValueError, match="action has 3 entries"):
        rec.step(np.zeros(3), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {"success": False})
    with pytest.raises(TypeError, match="success"):
        rec.step(np.zeros(4), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {"success": "False"})
    with pytest.raises(RuntimeError, match="no steps"):
        rec.finish()
    assert rec.num_steps == 0  # failed steps recorded nothing

    rec.step(np.zeros(4), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {"success": False})
    with pytest.raises(RuntimeError, match="in progress"):
        rec.reset({"x": np.zeros(2, np.float32)})
    rec.step(np.zeros(4), {"x": np.zeros(2, np.float32)}, 0.0, False, True, {"success": False})
    with pytest.raises(RuntimeError, match="already ended"):
        rec.step(np.zeros(4), {"x": np.zeros(2, np.float32)}, 0.0, False, False, {"success": False})
    rec.discard()
    assert not rec.in_progress
    rec.reset({"x": np.zeros(2, np.float32)})


# ------------------------------------------------------------------------------- folders


def test_write_list_load_dir(tmp_path):
    d = tmp_path / "demos"
    eps = [make_episode(T=3 + i, seed=i) for i in range(3)]
    paths = write_episodes_dir(d, eps)
    assert [p.name for p in paths] == ["episode_000000.npz", "episode_000001.npz", "episode_000002.npz"]
    more = write_episodes_dir(d, iter([make_episode(seed=9)]))  # appends, never overwrites
    assert [p.name for p in more] == ["episode_000003.npz"]
    assert list_episodes(d) == paths + more
    loaded = load_episodes(d)
    assert len(loaded) == 4
    for a, b in zip(eps, loaded):
        assert_episodes_equal(a, b)


def test_load_episodes_missing_or_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_episodes(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no episodes"):
        load_episodes(tmp_path)
    (tmp_path / ".episode_000000.npz.abcd.tmp.npz").write_bytes(b"partial")  # leftover of a crash
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no episodes"):
        load_episodes(tmp_path)
    with pytest.raises(FileNotFoundError):
        summarize(tmp_path)


def test_load_episodes_does_not_skip_a_corrupt_one(tmp_path):
    write_episodes_dir(tmp_path, [make_episode(seed=i) for i in range(3)])
    bad = tmp_path / "episode_000001.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(EpisodeFormatError, match="episode_000001.npz"):
        load_episodes(tmp_path)
    with pytest.raises(EpisodeFormatError, match="episode_000001.npz"):
        summarize(tmp_path)


def test_summarize(tmp_path):
    a = make_episode(T=4, seed=0)
    b = make_episode(T=6, seed=1)
    b.success[:] = False
    b.terminated[:] = False
    b.truncated[-1] = True
    write_episodes_dir(tmp_path, [a, b])
    s = summarize(tmp_path)
    json.dumps(s)  # JSON-serialisable
    assert s["n_episodes"] == 2 and s["n_steps"] == 10
    assert s["success_rate"] == 0.5
    assert s["mean_length"] == 5.0 and s["min_length"] == 4 and s["max_length"] == 6
    assert s["mean_return"] == pytest.approx((a.total_reward + b.total_reward) / 2)
    assert s["intervention_rate"] == pytest.approx(2 / 10)
    assert s["obs"]["front"] == {"shape": [16, 16, 3], "dtype": "uint8"}
    assert s["obs"]["tcp_pose"] == {"shape": [7], "dtype": "float32"}
    assert s["action_dim"] == 4
    assert set(s["instructions"]) == set(a.instructions) | set(b.instructions)
    assert s["tasks"] == ["pick"]


def test_summarize_rejects_mixed_layouts(tmp_path):
    write_episodes_dir(tmp_path, [make_episode(img_size=16), make_episode(img_size=8)])
    with pytest.raises(EpisodeFormatError, match="episode_000001.npz.*layout"):
        summarize(tmp_path)


# ---------------------------------------------------------------------------------- cost


def test_write_read_time_100_steps(tmp_path, capsys):
    """The case in the module docstring: 100 steps, two 128x128x3 image streams.

    Uses synthetic rendered-like frames; the bound is loose (it guards against, e.g.,
    compression being turned off or a quadratic copy, not against a slow machine).
    """
    T = 100
    rng = np.random.default_rng(0)
    ep = make_episode(T=T, images=False)
    ep.observations["front"] = _smooth_images(T, rng)
    ep.observations["wrist"] = _smooth_images(T, rng)[:, ::-1].copy()
    p = tmp_path / "ep.npz"
    t0 = time.perf_counter()
    save_episode(p, ep)
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = load_episode(p)
    t_load = time.perf_counter() - t0
    raw = sum(v.nbytes for v in ep.observations.values())
    size = p.stat().st_size
    with capsys.disabled():
        print(f"\n100-step episode: {raw / 1e6:.1f} MB raw -> {size / 1e6:.2f} MB, save {t_save:.3f} s, load {t_load:.3f} s")
    assert_episodes_equal(ep, back)
    assert size < raw / 5  # compression is on
    assert t_save < 10 and t_load < 10

"""ROS messages <-> NumPy, and ROS messages -> policy observations.

Conventions: quaternions are (w, x, y, z) on the NumPy side (as everywhere in serl_ctrl) and
(x, y, z, w) in geometry_msgs; times are float seconds on the NumPy side. Functions here take
message *instances* and never create nodes, so they are tested without a ROS graph.

:class:`ObservationBuilder` turns the latest state messages into the observation dict a policy
expects, following the keys of the gym environments (:mod:`serl_ctrl.envs.panda_env`):

=====================  =======================================  ==================================
key                    shape / dtype                            from
=====================  =======================================  ==================================
``tcp_pose``           (7,) float32: x, y, z, qw, qx, qy, qz    ``tcp_pose`` (PoseStamped)
``tcp_vel``            (6,) float32: linear, angular            ``tcp_twist`` (TwistStamped)
``gripper``            (1,) float32: finger opening / 8 cm      ``joint_states`` (the two fingers)
``joint_pos``          (7,) or (9,) float32                     ``joint_states`` (by joint name)
``joint_vel``          (7,) or (9,) float32                     ``joint_states``
``<name>_pos``         (3,) float32                             ``objects/<name>/pose``
``<name>_quat``        (4,) float32 (w, x, y, z)                ``objects/<name>/pose``
``<camera>``           (H, W, 3) uint8 RGB                      ``<camera>/image_raw``
=====================  =======================================  ==================================
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..envs.panda import FINGER_JOINTS, JOINT_NAMES, MAX_FINGER_WIDTH

__all__ = [
    "ObservationBuilder", "Source", "array_to_image", "camera_info", "fill_header", "float_array",
    "image_to_array", "joint_positions", "obs_fields", "pose_to_arrays", "set_pose", "set_twist",
    "stamp_to_sec", "twist_to_arrays",
]


# --- time and headers -----------------------------------------------------------------------------


def stamp_to_sec(stamp) -> float:
    """A builtin_interfaces/Time as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def set_stamp(stamp, t: float) -> None:
    """Write float seconds ``t`` into a builtin_interfaces/Time."""
    ns = int(round(t * 1e9))
    stamp.sec, stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000


def fill_header(header, t: float, frame_id: str = "") -> None:
    set_stamp(header.stamp, t)
    header.frame_id = frame_id


# --- geometry -------------------------------------------------------------------------------------


def pose_to_arrays(pose) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Pose -> position (3,), quaternion (w, x, y, z) (4,)."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.w, q.x, q.y, q.z])


def set_pose(pose, pos, quat) -> None:
    """Write position (3,) and quaternion (w, x, y, z) into a geometry_msgs/Pose."""
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in pos)
    pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = (float(v) for v in quat)


def twist_to_arrays(twist) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Twist -> linear (3,), angular (3,)."""
    v, w = twist.linear, twist.angular
    return np.array([v.x, v.y, v.z]), np.array([w.x, w.y, w.z])


def set_twist(twist, linear, angular) -> None:
    twist.linear.x, twist.linear.y, twist.linear.z = (float(v) for v in linear)
    twist.angular.x, twist.angular.y, twist.angular.z = (float(v) for v in angular)


# --- arrays ---------------------------------------------------------------------------------------


def float_array(values: Iterable[float]) -> array.array:
    """A float64 sequence in the form rclpy stores ``float64[]`` fields (fast to assign)."""
    return array.array("d", np.ascontiguousarray(values, dtype=np.float64).tobytes())


def joint_positions(msg, names: Sequence[str] = JOINT_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities of ``names`` from a sensor_msgs/JointState, matched by name.

    Raises ValueError naming the joints the message lacks. Velocities missing from the message
    (an empty ``velocity`` field is legal) come back as zeros.
    """
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"joint_states lacks joints {missing} (it has {list(msg.name)})")
    pos = np.asarray(msg.position, dtype=np.float64)
    vel = np.asarray(msg.velocity, dtype=np.float64)
    idx = [index[n] for n in names]
    if pos.size != len(msg.name):
        raise ValueError(f"joint_states has {len(msg.name)} names but {pos.size} positions")
    q = pos[idx]
    dq = vel[idx] if vel.size == len(msg.name) else np.zeros(len(names))
    return q, dq


# --- images ---------------------------------------------------------------------------------------

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8) -> (H, W, 3) uint8 RGB."""
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise ValueError(f"image encoding {msg.encoding!r} is not supported; use one of {sorted(_CHANNELS)}")
    h, w, step = msg.height, msg.width, msg.step
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if step < w * channels or buf.size < h * step:
        raise ValueError(f"image of {w}x{h} {msg.encoding} has step {step} and {buf.size} bytes: truncated")
    img = buf[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if msg.encoding in ("bgr8", "bgra8"):
        img = img[:, :, 2::-1]
    elif channels == 4:
        img = img[:, :, :3]
    elif channels == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def array_to_image(msg, img: np.ndarray) -> None:
    """Fill a sensor_msgs/Image (rgb8) from an (H, W, 3) uint8 array (header left to the caller)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * 3)
    msg.data = array.array("B", img.tobytes())


def camera_info(msg, width: int, height: int, fovy_deg: float) -> None:
    """Fill a sensor_msgs/CameraInfo for an ideal pinhole camera with vertical field of view
    ``fovy_deg`` (what MuJoCo and PyBullet render: square pixels, no distortion)."""
    fy = 0.5 * height / np.tan(np.radians(fovy_deg) / 2.0)
    fx, cx, cy = fy, (width - 1) / 2.0, (height - 1) / 2.0
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]


# --- observations ---------------------------------------------------------------------------------


def obs_fields(spec_obs: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """A policy spec's ``obs`` (key -> ObsField, or (shape, dtype)) as key -> (shape, dtype str)."""
    out = {}
    for key, f in spec_obs.items():
        if hasattr(f, "shape"):
            shape, dtype = f.shape, getattr(f, "dtype", "float32")
        else:
            shape, dtype = f
        out[key] = (tuple(int(n) for n in shape), str(np.dtype(dtype)))
    return out


@dataclass(frozen=True)
class Source:
    """One input topic an observation needs: ``kind`` in tcp_pose, tcp_twist, joint_states,
    object, camera; ``name`` is the object or camera name (else "")."""

    kind: str
    name: str = ""

    @property
    def topic(self) -> str:
        if self.kind == "object":
            return f"objects/{self.name}/pose"
        if self.kind == "camera":
            return f"{self.name}/image_raw"
        return self.kind

    @property
    def label(self) -> str:
        return self.topic


_FIXED = {"tcp_pose": ((7,), "tcp_pose"), "tcp_vel": ((6,), "tcp_twist"), "gripper": ((1,), "joint_states")}


class ObservationBuilder:
    """Latest messages in, observation dict out (see the module docstring for the key mapping).

    Built from a policy's observation spec; keys it cannot produce raise ValueError at
    construction, naming them and the supported patterns (so a node fails at configure, not at
    the first tick). ``update_*`` take messages and the receive time; :meth:`stamps` gives each
    source's latest stamp (None before its first message) for the watchdog; :meth:`build` the
    observation.
    """

    def __init__(self, spec_obs: Mapping[str, Any], joint_names: Sequence[str] = JOINT_NAMES) -> None:
        self.fields = obs_fields(spec_obs)
        self.joint_names = tuple(joint_names)
        self.sources: dict[Source, list[str]] = {}
        problems = []
        for key, (shape, dtype) in self.fields.items():
            source, why = self._source_for(key, shape, dtype)
            if source is None:
                problems.append(why)
            else:
                self.sources.setdefault(source, []).append(key)
        if problems:
            raise ValueError(
                "the policy's observations cannot be built from the ROS topics: " + "; ".join(problems) +
                ". Supported keys: tcp_pose (7), tcp_vel (6), gripper (1), joint_pos/joint_vel (7 or 9), "
                "<object>_pos (3) and <object>_quat (4) from objects/<object>/pose, and uint8 (H, W, 3) "
                "images <camera> from <camera>/image_raw"
            )
        self._stamp: dict[Source, float | None] = {s: None for s in self.sources}
        self._recv: dict[Source, float | None] = {s: None for s in self.sources}
        self._values: dict[str, np.ndarray] = {}

    def _source_for(self, key: str, shape: tuple[int, ...], dtype: str) -> tuple[Source | None, str]:
        if dtype == "uint8":
            if len(shape) == 3 and shape[2] == 3:
                return Source("camera", key), ""
            return None, f"{key!r}: uint8 observations must be (H, W, 3) images, got {shape}"
        if key in _FIXED:
            want, kind = _FIXED[key]
            if shape != want:
                return None, f"{key!r} has shape {shape}, expected {want}"
            return Source(kind), ""
        if key in ("joint_pos", "joint_vel"):
            if shape not in ((7,), (9,)):
                return None, f"{key!r} has shape {shape}, expected (7,) or (9,)"
            return Source("joint_states"), ""
        for suffix, want in (("_pos", (3,)), ("_quat", (4,))):
            if key.endswith(suffix) and len(key) > len(suffix):
                if shape != want:
                    return None, f"{key!r} has shape {shape}, expected {want}"
                return Source("object", key[: -len(suffix)]), ""
        return None, f"{key!r} ({shape}, {dtype}) has no source topic"

    # --- what to subscribe to -------------------------------------------------------------------------

    @property
    def objects(self) -> list[str]:
        return sorted(s.name for s in self.sources if s.kind == "object")

    @property
    def cameras(self) -> list[str]:
        return sorted(s.name for s in self.sources if s.kind == "camera")

    def needs(self, kind: str) -> bool:
        return any(s.kind == kind for s in self.sources)

    # --- updates --------------------------------------------------------------------------------------

    def _mark(self, source: Source, stamp: float, recv: float) -> None:
        self._stamp[source] = stamp
        self._recv[source] = recv

    def update_tcp_pose(self, msg, recv: float = 0.0) -> None:
        src = Source("tcp_pose")
        if src not in self.sources:
            return
        pos, quat = pose_to_arrays(msg.pose)
        if quat[0] < 0:
            quat = -quat
        self._values["tcp_pose"] = np.concatenate([pos, quat]).astype(np.float32)
        self._mark(src, stamp_to_sec(msg.header.stamp), recv)

    def update_tcp_twist(self, msg, recv: float = 0.0) -> None:
        src = Source("tcp_twist")
        if src not in self.sources:
            return
        lin, ang = twist_to_arrays(msg.twist)
        self._values["tcp_vel"] = np.concatenate([lin, ang]).astype(np.float32)
        self._mark(src, stamp_to_sec(msg.header.stamp), recv)

    def update_joint_states(self, msg, recv: float = 0.0) -> None:
        src = Source("joint_states")
        if src not in self.sources:
            return
        q, dq = joint_positions(msg, self.joint_names)
        keys = self.sources[src]
        if "gripper" in keys:
            width = sum(q[self.joint_names.index(n)] for n in FINGER_JOINTS)
            self._values["gripper"] = np.array([np.clip(width / MAX_FINGER_WIDTH, 0.0, 1.0)], dtype=np.float32)
        for key, arr in (("joint_pos", q), ("joint_vel", dq)):
            if key in keys:
                n = self.fields[key][0][0]
                self._values[key] = arr[:n].astype(np.float32)
        self._mark(src, stamp_to_sec(msg.header.stamp), recv)

    def update_object(self, name: str, msg, recv: float = 0.0) -> None:
        src = Source("object", name)
        if src not in self.sources:
            return
        pos, quat = pose_to_arrays(msg.pose)
        if quat[0] < 0:
            quat = -quat
        for key in self.sources[src]:
            self._values[key] = (pos if key.endswith("_pos") else quat).astype(np.float32)
        self._mark(src, stamp_to_sec(msg.header.stamp), recv)

    def update_image(self, camera: str, msg, recv: float = 0.0) -> None:
        src = Source("camera", camera)
        if src not in self.sources:
            return
        img = image_to_array(msg)
        want = self.fields[camera][0]
        if img.shape != want:
            raise ValueError(f"camera {camera!r} sends {img.shape} images, the policy expects {want}")
        self._values[camera] = img
        self._mark(src, stamp_to_sec(msg.header.stamp), recv)

    # --- reading --------------------------------------------------------------------------------------

    def stamps(self) -> dict[str, float | None]:
        """Latest stamp of each source (None before its first message), by topic."""
        return {s.label: t for s, t in self._stamp.items()}

    def newest(self) -> tuple[float | None, float | None]:
        """(newest stamp over all sources, the earliest receive time of a message with that stamp):
        when that observation instant first reached this process."""
        stamps = [t for t in self._stamp.values() if t is not None]
        if not stamps:
            return None, None
        newest = max(stamps)
        return newest, min(self._recv[s] for s, t in self._stamp.items() if t == newest)

    def synced_stamp(self) -> float | None:
        """The stamp every non-camera source has reached, when they all carry the same one (one
        simulator step or one ros2_control update seen completely), else None. Cameras run slower
        and are left out: a pixel policy uses the newest frame, whose age the watchdog bounds."""
        values = [t for s, t in self._stamp.items() if s.kind != "camera"]
        if not values or any(t is None for t in values):
            return None
        first = values[0]
        return first if all(t == first for t in values) else None

    def oldest_stamp(self) -> float | None:
        values = list(self._stamp.values())
        return None if any(v is None for v in values) else min(values)

    def ready(self) -> bool:
        return all(t is not None for t in self._stamp.values())

    def build(self) -> dict[str, np.ndarray]:
        missing = [k for k in self.fields if k not in self._values]
        if missing:
            raise ValueError(f"no message yet for observation keys {missing}")
        return {k: self._values[k] for k in self.fields}

    def clear(self) -> None:
        self._values.clear()
        for s in self._stamp:
            self._stamp[s] = None
            self._recv[s] = None

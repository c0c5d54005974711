"""MuJoCo backend: the Panda from pybullet_data's URDF, the scene, and the impedance controller
compiled into actuators.

The controller law of :mod:`serl_ctrl.envs.controller` becomes, per Cartesian axis, two
``general`` actuators on a site transmission with a ``refsite``: a spring whose ``forcerange`` is
``stiffness * clip`` (MuJoCo's force clamp *is* the reference limiting) and a damper. Seven joint
actuators hold the posture, and ``actuatorgravcomp`` routes gravity compensation through the same
per-joint torque limits. The whole controller therefore runs inside ``mj_step`` at the physics
rate, and stepping costs no Python per physics step.
"""

from __future__ import annotations

import functools
import os
import tempfile
import xml.etree.ElementTree as ET

import mujoco
import numpy as np

from .backend import HAND_CAMERA_LOOKAT, HAND_CAMERA_UP, Backend, look_at_axes
from .controller import DOWN_QUAT, ImpedanceGains
from .mujoco_render import OffscreenRenderer
from .panda import ARM_JOINTS, FINGER_JOINTS, HAND_LINK, HOME_Q, TCP_LINK, panda_urdf_for_sim
from .scene import Scene, Shape

_ROBOT_RGBA = {"panda_hand": "0.25 0.25 0.27 1", "panda_leftfinger": "0.25 0.25 0.27 1",
               "panda_rightfinger": "0.25 0.25 0.27 1"}


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in np.ravel(values))


@functools.lru_cache(maxsize=1)
def panda_mjcf() -> str:
    """MJCF text of the Panda, converted by MuJoCo from pybullet_data's URDF (cached per process).

    Collision meshes double as visual meshes (see ``panda_urdf_for_sim``).
    """
    text = panda_urdf_for_sim().read_text()
    start = text.index("<robot")
    end = text.index(">", start) + 1
    text = (
        text[:end]
        + '<mujoco><compiler discardvisual="true" fusestatic="false" strippath="false"/></mujoco>'
        + text[end:]
    )
    model = mujoco.MjModel.from_xml_string(text)
    fd, path = tempfile.mkstemp(suffix=".xml")
    os.close(fd)
    try:
        mujoco.mj_saveLastXML(path, model)
        with open(path) as f:
            return f.read()
    finally:
        os.unlink(path)


def _find_body(root: ET.Element, name: str) -> ET.Element:
    for body in root.iter("body"):
        if body.get("name") == name:
            return body
    raise KeyError(f"body {name!r} not found in the Panda MJCF")


def _shape_geom(parent: ET.Element, shape: Shape) -> ET.Element:
    kind = shape.kind
    size = shape.size if kind != "cylinder" else shape.size[:2]
    geom = ET.SubElement(parent, "geom", name=shape.name, type=kind, size=_fmt(size), rgba=_fmt(shape.rgba))
    if shape.collide:
        geom.set("friction", f"{shape.friction} 0.005 0.0001")
        geom.set("contype", "1")
        geom.set("conaffinity", "1")
        geom.set("condim", "4" if shape.movable else "3")
        if shape.movable:
            geom.set("mass", f"{shape.mass}")
    else:
        geom.set("contype", "0")
        geom.set("conaffinity", "0")
        geom.set("group", "2")
    return geom


def build_mjcf(scene: Scene, gains: ImpedanceGains, image_size: int = 128, render_size: int = 256) -> str:
    """The full MJCF: Panda + controller actuators + table + scene shapes + cameras."""
    root = ET.fromstring(panda_mjcf())
    root.set("model", "serl_ctrl_panda")
    for tag in ("option", "visual", "default"):
        for el in root.findall(tag):
            root.remove(el)
    option = ET.Element("option", timestep="0.002", integrator="implicitfast", cone="elliptic", impratio="5")
    root.insert(1, option)
    visual = ET.Element("visual")
    size = max(image_size, render_size)
    ET.SubElement(visual, "global", offwidth=str(max(size, 640)), offheight=str(max(size, 480)))
    # On a CPU (llvmpipe) shadows are the dominant rendering cost (a 4096 shadow map: ~25 fps at
    # 128 px), then multisampling; both are off. (Measured here under load: 4x MSAA 197 fps, none 252.)
    ET.SubElement(visual, "quality", shadowsize="0", offsamples="0")
    ET.SubElement(visual, "headlight", ambient="0.4 0.4 0.4", diffuse="0.5 0.5 0.5", specular="0 0 0")
    root.insert(2, visual)

    worldbody = root.find("worldbody")
    robot_bodies = list(worldbody.iter("body"))
    for body in robot_bodies:
        body.set("gravcomp", "1")
        for geom in body.findall("geom"):
            # Robot geoms touch the world and objects but not each other (as in PyBullet without
            # URDF_USE_SELF_COLLISION).
            geom.set("contype", "1")
            geom.set("conaffinity", "0")
            geom.set("rgba", _ROBOT_RGBA.get(body.get("name"), "0.92 0.92 0.92 1"))
            if "finger" in (body.get("name") or ""):
                geom.set("condim", "4")
                geom.set("friction", "1 0.005 0.0001")
    for joint in root.iter("joint"):
        name = joint.get("name")
        if name in ARM_JOINTS:
            limit = gains.torque_limits[ARM_JOINTS.index(name)]
            joint.set("damping", f"{gains.joint_damping}")
            joint.set("actuatorfrcrange", f"{-limit} {limit}")
            joint.set("actuatorgravcomp", "true")
        elif name in FINGER_JOINTS:
            joint.set("damping", "0.1")

    _find_body(root, TCP_LINK).append(ET.Element("site", name="tcp", size="0.005", rgba="1 0 0 0", group="4"))
    hand = _find_body(root, HAND_LINK)
    for cam in scene.cameras:
        if cam.attach == "hand":
            x, y = look_at_axes(np.array(cam.pos), HAND_CAMERA_LOOKAT, HAND_CAMERA_UP)
            hand.append(ET.Element("camera", name=cam.name, pos=_fmt(cam.pos), xyaxes=_fmt([*x, *y]),
                                   fovy=f"{cam.fovy}"))

    world_items = [
        ET.Element("light", name="sun", directional="true", pos="0 0 3", dir="-0.3 0.2 -1",
                   diffuse="0.6 0.6 0.6", castshadow="false"),
        # A finite, untextured table: MuJoCo draws an infinite plane as many subdivided quads (every
        # frame 2.3x slower on a CPU: 317 vs 722 fps at 128 px), and a checker texture cost another
        # third of the frame (two cameras: 480 vs 730 renders/s).
        ET.Element("geom", name="table", type="plane", size="1.2 1.2 0.05", rgba="0.6 0.56 0.5 1",
                   contype="1", conaffinity="1", friction="1 0.005 0.0001"),
        # Reference frames of the Cartesian springs: world-aligned for translation, gripper-down
        # for rotation (see controller.DOWN_QUAT).
        ET.Element("site", name="ref_pos", pos="0 0 0", size="0.001", group="5"),
        ET.Element("site", name="ref_rot", pos="0 0 0", quat=_fmt(DOWN_QUAT), size="0.001", group="5"),
    ]
    for cam in scene.cameras:
        if cam.attach == "world":
            x, y = look_at_axes(np.array(cam.pos), np.array(cam.lookat), np.array([0.0, 0.0, 1.0]))
            world_items.append(ET.Element("camera", name=cam.name, pos=_fmt(cam.pos), xyaxes=_fmt([*x, *y]),
                                          fovy=f"{cam.fovy}"))
        elif cam.attach != "hand":
            raise ValueError(f"camera {cam.name!r}: attach must be 'world' or 'hand', got {cam.attach!r}")
    for shape in scene.shapes:
        body = ET.Element("body", name=shape.name, pos=_fmt(shape.pos))
        if shape.movable:
            ET.SubElement(body, "freejoint", name=f"{shape.name}_joint")
        else:
            body.set("mocap", "true")  # static, but movable between episodes
        _shape_geom(body, shape)
        world_items.append(body)
    for i, item in enumerate(world_items):
        worldbody.insert(i, item)

    actuator = ET.SubElement(root, "actuator")
    axes = ("x", "y", "z", "rx", "ry", "rz")
    stiff, damp, clip = gains.stiffness(), gains.damping(), gains.clip()
    for i, axis in enumerate(axes):
        gear = np.zeros(6)
        gear[i] = 1.0
        ref = "ref_pos" if i < 3 else "ref_rot"
        force = stiff[i] * clip[i]
        ET.SubElement(actuator, "general", name=f"spring_{axis}", site="tcp", refsite=ref, gear=_fmt(gear),
                      biastype="affine", gainprm=f"{stiff[i]}", biasprm=f"0 {-stiff[i]} 0",
                      forcelimited="true", forcerange=f"{-force} {force}")
    for i, axis in enumerate(axes):
        gear = np.zeros(6)
        gear[i] = 1.0
        ref = "ref_pos" if i < 3 else "ref_rot"
        ET.SubElement(actuator, "general", name=f"damper_{axis}", site="tcp", refsite=ref, gear=_fmt(gear),
                      biastype="affine", gainprm="0", biasprm=f"0 0 {-damp[i]}")
    for name in ARM_JOINTS:
        ET.SubElement(actuator, "general", name=f"posture_{name}", joint=name, biastype="affine",
                      gainprm=f"{gains.null_stiffness}", biasprm=f"0 {-gains.null_stiffness} {-gains.null_damping}")
    for name in FINGER_JOINTS:
        ET.SubElement(actuator, "general", name=f"finger_{name}", joint=name, biastype="affine",
                      gainprm=f"{gains.finger_stiffness}",
                      biasprm=f"0 {-gains.finger_stiffness} {-gains.finger_damping}",
                      forcelimited="true", forcerange=f"{-gains.finger_force} {gains.finger_force}")
    return ET.tostring(root, encoding="unicode")


class MujocoBackend(Backend):
    """The Panda and a scene in MuJoCo, controller in actuators (see the module docstring)."""

    def __init__(self, scene: Scene, gains: ImpedanceGains, image_size: int = 128) -> None:
        super().__init__(scene, gains, image_size)
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(scene, gains, image_size))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.physics_dt = float(m.opt.timestep)
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINTS + FINGER_JOINTS]
        self._qadr = np.array([m.jnt_qposadr[j] for j in jid])
        self._dadr = np.array([m.jnt_dofadr[j] for j in jid])
        self._tcp = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        act = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, n)  # noqa: E731
        self._spring = np.array([act(f"spring_{a}") for a in ("x", "y", "z", "rx", "ry", "rz")])
        self._posture = np.array([act(f"posture_{n}") for n in ARM_JOINTS])
        self._finger = np.array([act(f"finger_{n}") for n in FINGER_JOINTS])
        self._bodies: dict[str, int] = {}
        self._free_qadr: dict[str, int] = {}
        self._mocap: dict[str, int] = {}
        for shape in scene.shapes:
            bid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, shape.name)
            self._bodies[shape.name] = bid
            if shape.movable:
                jnt = m.body_jntadr[bid]
                self._free_qadr[shape.name] = int(m.jnt_qposadr[jnt])
            else:
                self._mocap[shape.name] = int(m.body_mocapid[bid])
        self._renderers: dict[tuple[int, int], OffscreenRenderer] = {}
        self._vel6 = np.zeros(6)
        self._tcp_cache: tuple[np.ndarray, np.ndarray] | None = None

    # --- state ------------------------------------------------------------------------------------

    def reset(self, q_arm, finger_width, poses) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._tcp_cache = None
        d.qpos[self._qadr[:7]] = q_arm
        d.qpos[self._qadr[7:]] = 0.5 * finger_width
        for name, (pos, quat) in poses.items():
            self.set_object_pose(name, pos, quat)
        d.ctrl[self._posture] = HOME_Q
        mujoco.mj_forward(m, d)
        from .controller import cartesian_coords

        pos, quat = self.tcp_pose()
        self.set_reference(cartesian_coords(pos, quat), finger_width)
        mujoco.mj_forward(m, d)
        self._tcp_cache = None

    def set_reference(self, coords, finger_width) -> None:
        self.data.ctrl[self._spring] = coords
        self.data.ctrl[self._finger] = 0.5 * finger_width

    def step(self, n: int) -> None:
        mujoco.mj_step(self.model, self.data, nstep=n)
        self._tcp_cache = None
        # One forward pass per control step makes every pose and velocity we read consistent with
        # the state just integrated (mj_step leaves kinematics one physics step behind).
        mujoco.mj_forward(self.model, self.data)

    def tcp_pose(self):
        # Cached until the state changes: an env step reads it several times.
        if self._tcp_cache is None:
            d = self.data
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, d.site_xmat[self._tcp])
            self._tcp_cache = (d.site_xpos[self._tcp].copy(), quat)
        pos, quat = self._tcp_cache
        return pos.copy(), quat.copy()

    def finger_width(self) -> float:
        q = self.data.qpos
        return float(q[self._qadr[7]] + q[self._qadr[8]])

    def tcp_velocity(self):
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._tcp, self._vel6, 0)
        return self._vel6[3:].copy(), self._vel6[:3].copy()

    def joint_state(self):
        return self.data.qpos[self._qadr].copy(), self.data.qvel[self._dadr].copy()

    def object_pose(self, name):
        if name in self._free_qadr:
            adr = self._free_qadr[name]
            q = self.data.qpos
            return q[adr : adr + 3].copy(), q[adr + 3 : adr + 7].copy()
        bid = self._body(name)
        return self.data.xpos[bid].copy(), self.data.xquat[bid].copy()

    def object_velocity(self, name):
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_BODY, self._body(name), vel, 0)
        return vel[3:], vel[:3]

    def set_object_pose(self, name, pos, quat) -> None:
        d = self.data
        if name in self._free_qadr:
            adr = self._free_qadr[name]
            d.qpos[adr : adr + 3] = pos
            d.qpos[adr + 3 : adr + 7] = quat
            dadr = self.model.jnt_dofadr[self.model.body_jntadr[self._bodies[name]]]
            d.qvel[dadr : dadr + 6] = 0.0
        else:
            self._body(name)  # a clear error for unknown names
            mid = self._mocap[name]
            d.mocap_pos[mid] = pos
            d.mocap_quat[mid] = quat

    def _body(self, name: str) -> int:
        try:
            return self._bodies[name]
        except KeyError:
            raise KeyError(f"unknown object {name!r}; objects: {list(self._bodies)}") from None

    # --- rendering --------------------------------------------------------------------------------

    def render(self, camera, width=None, height=None):
        width = width or self.image_size
        height = height or self.image_size
        self.camera(camera)  # validates the name
        key = (width, height)
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = self._renderers[key] = OffscreenRenderer(self.model, width, height)
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        return renderer.render(self.data, cam_id)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

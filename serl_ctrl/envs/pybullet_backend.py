"""PyBullet backend: pybullet_data's Panda URDF, the scene, and the impedance controller in NumPy.

PyBullet has no Cartesian actuators, so :func:`serl_ctrl.envs.controller.joint_torques` runs in
Python at every physics step (500 Hz) with PyBullet's Jacobian and inverse dynamics (for gravity),
and the joints are driven in torque mode. It is the same law and the same gains the MuJoCo backend
compiles into actuators, which is what makes the two simulators comparable.
"""

from __future__ import annotations

import numpy as np
import pybullet as pb
import pybullet_data

from .backend import HAND_CAMERA_LOOKAT, HAND_CAMERA_UP, Backend
from .controller import (
    ImpedanceGains,
    cartesian_coords,
    cartesian_velocity,
    finger_force,
    impedance_wrench,
    joint_torques,
    quat_to_mat,
)
from .panda import HAND_LINK, HOME_Q, JOINT_NAMES, TCP_LINK, panda_urdf_for_sim
from .scene import Scene, Shape

# PyBullet quaternions are (x, y, z, w); ours are (w, x, y, z).


def _to_wxyz(q) -> np.ndarray:
    return np.array([q[3], q[0], q[1], q[2]])


def _to_xyzw(q) -> list[float]:
    return [float(q[1]), float(q[2]), float(q[3]), float(q[0])]


class PybulletBackend(Backend):
    """The Panda and a scene in PyBullet (DIRECT mode, one physics client per backend)."""

    def __init__(self, scene: Scene, gains: ImpedanceGains, image_size: int = 128) -> None:
        super().__init__(scene, gains, image_size)
        self.cid = pb.connect(pb.DIRECT)
        c = self.cid
        pb.setTimeStep(self.physics_dt, physicsClientId=c)
        pb.setGravity(0, 0, -9.81, physicsClientId=c)
        pb.setPhysicsEngineParameter(numSolverIterations=50, physicsClientId=c)
        pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        self.table = pb.loadURDF("plane.urdf", physicsClientId=c)
        pb.changeDynamics(self.table, -1, lateralFriction=1.0, physicsClientId=c)
        self.robot = pb.loadURDF(
            str(panda_urdf_for_sim()), useFixedBase=True, flags=pb.URDF_USE_INERTIA_FROM_FILE, physicsClientId=c
        )
        joints: dict[str, int] = {}
        links: dict[str, int] = {}
        for j in range(pb.getNumJoints(self.robot, physicsClientId=c)):
            info = pb.getJointInfo(self.robot, j, physicsClientId=c)
            joints[info[1].decode()] = j
            links[info[12].decode()] = j
            pb.changeDynamics(self.robot, j, linearDamping=0.0, angularDamping=0.0, physicsClientId=c)
        self._joints = [joints[n] for n in JOINT_NAMES]
        self._tcp = links[TCP_LINK]
        self._hand = links[HAND_LINK]
        # PyBullet's default joint motors would fight the torque controller: switch them off.
        pb.setJointMotorControlArray(
            self.robot, self._joints, pb.VELOCITY_CONTROL, forces=[0.0] * 9, physicsClientId=c
        )
        # Jacobian rows in the controller's coordinates: angular rows rotated into the DOWN frame.
        self._rot_rows = quat_to_mat(np.array([0.0, 1.0, 0.0, 0.0])).T
        self._bodies = {shape.name: self._create(shape) for shape in scene.shapes}
        self._reference = np.zeros(6)
        self._finger_target = 0.0
        self._zeros9 = [0.0] * 9

    def _create(self, shape: Shape) -> int:
        c = self.cid
        he = shape.half_extents
        if shape.kind == "box":
            vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=he.tolist(), rgbaColor=shape.rgba, physicsClientId=c)
            col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=he.tolist(), physicsClientId=c)
        elif shape.kind == "sphere":
            vis = pb.createVisualShape(pb.GEOM_SPHERE, radius=he[0], rgbaColor=shape.rgba, physicsClientId=c)
            col = pb.createCollisionShape(pb.GEOM_SPHERE, radius=he[0], physicsClientId=c)
        else:
            vis = pb.createVisualShape(pb.GEOM_CYLINDER, radius=he[0], length=2 * he[2], rgbaColor=shape.rgba,
                                       physicsClientId=c)
            col = pb.createCollisionShape(pb.GEOM_CYLINDER, radius=he[0], height=2 * he[2], physicsClientId=c)
        body = pb.createMultiBody(
            baseMass=shape.mass,
            baseCollisionShapeIndex=col if shape.collide else -1,
            baseVisualShapeIndex=vis,
            basePosition=list(shape.pos),
            physicsClientId=c,
        )
        pb.changeDynamics(body, -1, lateralFriction=shape.friction, linearDamping=0.0, angularDamping=0.0,
                          physicsClientId=c)
        return body

    # --- state ------------------------------------------------------------------------------------

    def reset(self, q_arm, finger_width, poses) -> None:
        c = self.cid
        q = list(q_arm) + [0.5 * finger_width] * 2
        for j, value in zip(self._joints, q):
            pb.resetJointState(self.robot, j, float(value), 0.0, physicsClientId=c)
        for name, (pos, quat) in poses.items():
            self.set_object_pose(name, pos, quat)
        pos, quat = self.tcp_pose()
        self.set_reference(cartesian_coords(pos, quat), finger_width)

    def set_reference(self, coords, finger_width) -> None:
        self._reference = np.asarray(coords, dtype=float).copy()
        self._finger_target = float(finger_width)

    def _control(self) -> None:
        c, g = self.cid, self.gains
        states = pb.getJointStates(self.robot, self._joints, physicsClientId=c)
        q = [s[0] for s in states]
        dq = [s[1] for s in states]
        link = pb.getLinkState(self.robot, self._tcp, computeLinkVelocity=1, computeForwardKinematics=1,
                               physicsClientId=c)
        coords = cartesian_coords(np.asarray(link[4]), _to_wxyz(link[5]))
        velocity = cartesian_velocity(np.asarray(link[6]), np.asarray(link[7]))
        jac_t, jac_r = pb.calculateJacobian(self.robot, self._tcp, [0.0, 0.0, 0.0], q, dq, self._zeros9,
                                            physicsClientId=c)
        jac = np.vstack([np.asarray(jac_t), self._rot_rows @ np.asarray(jac_r)])
        gravity = np.asarray(pb.calculateInverseDynamics(self.robot, q, self._zeros9, self._zeros9,
                                                         physicsClientId=c))
        qa, dqa = np.asarray(q), np.asarray(dq)
        wrench = impedance_wrench(self._reference, coords, velocity, g)
        tau_arm = joint_torques(jac[:, :7], wrench, qa[:7], dqa[:7], HOME_Q, gravity[:7], g)
        tau_arm -= g.joint_damping * dqa[:7]  # passive joint damping (a joint property in MuJoCo)
        tau_fingers = finger_force(self._finger_target, qa[7:], dqa[7:], g) + gravity[7:] - 0.1 * dqa[7:]
        pb.setJointMotorControlArray(self.robot, self._joints, pb.TORQUE_CONTROL,
                                     forces=np.concatenate([tau_arm, tau_fingers]).tolist(), physicsClientId=c)

    def step(self, n: int) -> None:
        for _ in range(n):
            self._control()
            pb.stepSimulation(physicsClientId=self.cid)

    def tcp_pose(self):
        link = pb.getLinkState(self.robot, self._tcp, computeForwardKinematics=1, physicsClientId=self.cid)
        return np.asarray(link[4]), _to_wxyz(link[5])

    def tcp_velocity(self):
        link = pb.getLinkState(self.robot, self._tcp, computeLinkVelocity=1, computeForwardKinematics=1,
                               physicsClientId=self.cid)
        return np.asarray(link[6]), np.asarray(link[7])

    def joint_state(self):
        states = pb.getJointStates(self.robot, self._joints, physicsClientId=self.cid)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def _body(self, name: str) -> int:
        try:
            return self._bodies[name]
        except KeyError:
            raise KeyError(f"unknown object {name!r}; objects: {list(self._bodies)}") from None

    def object_pose(self, name):
        pos, quat = pb.getBasePositionAndOrientation(self._body(name), physicsClientId=self.cid)
        return np.asarray(pos), _to_wxyz(quat)

    def object_velocity(self, name):
        lin, ang = pb.getBaseVelocity(self._body(name), physicsClientId=self.cid)
        return np.asarray(lin), np.asarray(ang)

    def set_object_pose(self, name, pos, quat) -> None:
        body = self._body(name)
        pb.resetBasePositionAndOrientation(body, list(map(float, pos)), _to_xyzw(quat), physicsClientId=self.cid)
        pb.resetBaseVelocity(body, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], physicsClientId=self.cid)

    # --- rendering --------------------------------------------------------------------------------

    def render(self, camera, width=None, height=None):
        width = width or self.image_size
        height = height or self.image_size
        cam = self.camera(camera)
        if cam.attach == "world":
            eye, target, up = np.array(cam.pos), np.array(cam.lookat), np.array([0.0, 0.0, 1.0])
        else:
            link = pb.getLinkState(self.robot, self._hand, computeForwardKinematics=1, physicsClientId=self.cid)
            rot = quat_to_mat(_to_wxyz(link[5]))
            origin = np.asarray(link[4])
            eye = origin + rot @ np.array(cam.pos)
            target = origin + rot @ HAND_CAMERA_LOOKAT
            up = rot @ HAND_CAMERA_UP
        view = pb.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        proj = pb.computeProjectionMatrixFOV(cam.fovy, width / height, 0.01, 5.0)
        _, _, rgba, _, _ = pb.getCameraImage(
            width, height, view, proj, renderer=pb.ER_TINY_RENDERER,
            flags=pb.ER_NO_SEGMENTATION_MASK, physicsClientId=self.cid,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def close(self) -> None:
        if self.cid is not None and pb.isConnected(self.cid):
            pb.disconnect(self.cid)
        self.cid = None

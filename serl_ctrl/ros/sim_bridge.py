"""sim_bridge: the simulated Panda (MuJoCo or PyBullet) behind the topics of a ros2_control arm.

A policy or tool written against this node reaches a real arm by remapping only. The node is a
thin adapter: the arm, its controller and the checks live in :class:`serl_ctrl.runtime.arm.SimArm`
and :class:`serl_ctrl.runtime.safety.SafetyFilter`.

Published (names relative to the node's namespace; remap freely)
  ``joint_states``                 sensor_msgs/JointState   the 9 Panda joints (7 arm + 2 fingers)
  ``tcp_pose``                     geometry_msgs/PoseStamped   TCP in ``base_frame``
  ``tcp_twist``                    geometry_msgs/TwistStamped  TCP velocity (world axes)
  ``objects/<name>/pose``          geometry_msgs/PoseStamped   simulated perception (task objects
                                   and targets, as the gym observations ``<name>_pos/_quat``)
  ``task/reward``                  std_msgs/Float64MultiArray  [stamp, reward, dense_reward,
                                   success, episode] (the simulated reward classifier)
  ``<cam>/image_raw``, ``<cam>/camera_info``   sensor_msgs, sensor-data QoS (best effort)
  ``/clock``                       rosgraph_msgs/Clock   simulated time; this node itself runs
                                   with use_sim_time false, every other node may use sim time
  ``/diagnostics``                 diagnostic_msgs/DiagnosticArray
Commands (reliable; every one passes the safety layer, a rejected one is logged with its reason
and the arm holds)
  ``joint_position_controller/commands``      std_msgs/Float64MultiArray: 7 arm joints, or 9 with
                                              the fingers, in joint_states order
  ``joint_trajectory_controller/joint_trajectory``   trajectory_msgs/JointTrajectory (by name)
  ``cartesian_controller/target_pose``        geometry_msgs/PoseStamped (TCP target)
  ``cartesian_controller/target_twist``       geometry_msgs/TwistStamped (TCP velocity, world axes)
  ``gripper_controller/commands``             std_msgs/Float64MultiArray: [opening in m, 0-0.08]
Services
  ``~/reset`` (std_srvs/Trigger): a new randomised episode;  ``~/pause`` (std_srvs/SetBool).

Training in simulation: ``real_time_factor`` runs simulated time faster than the wall clock, and
``lockstep_hz`` (the actor's control rate) makes the simulation wait at each of the actor's instants
for the Cartesian target that answers it, so a loaded machine gives late answers no room: every
step lasts one period, as in the gym environment.

Joint commands are tracked through forward kinematics by the Cartesian impedance controller (see
serl_ctrl.runtime.arm for why). Stamps are simulated time; a zero stamp means "now". With no
accepted command for ``command_timeout_s`` the arm holds (reference latched at the measured pose).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from ..runtime.arm import SimArm
from ..runtime.safety import CommandWatchdog, SafetyFilter, SafetyLimits
from . import convert
from .common import (CLOCK_QOS, COMMAND_QOS, SENSOR_QOS, STATE_QOS, diagnostic_array, make_executor, run_node,
                     set_realtime_priority)
from .params import SIM_BRIDGE, ParameterError, declare, on_set_validator

REWARD_LAYOUT = ("stamp", "reward", "dense_reward", "success", "episode")
# As fast as possible still waits this long for commands between ticks: a zero wait never lets
# the EventsExecutor's DDS listener threads in (nothing is delivered, not even discovery).
FAST_MODE_WAIT_S = 1e-4


class SimBridge(Node):
    """The node; ``run()`` is its loop (ticks paced to the wall clock, or as fast as possible)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_bridge", **kwargs)
        p = declare(self, SIM_BRIDGE)
        if self.get_parameter("use_sim_time").value:
            raise ParameterError("sim_bridge publishes /clock and must run with use_sim_time false")
        self.params = p
        self.add_on_set_parameters_callback(on_set_validator(SIM_BRIDGE, self, self._on_params))
        self.arm = SimArm(task=p["task"], backend=p["backend"], image_size=p["image_size"], seed=p["seed"])
        self.physics_steps = max(1, int(round(1.0 / (p["rate_hz"] * self.arm.physics_dt))))
        self.tick_dt = self.physics_steps * self.arm.physics_dt
        self.real_time = bool(p["real_time"])
        self.real_time_factor = float(p["real_time_factor"])
        self.safety = SafetyFilter(SafetyLimits(command_timeout_s=p["command_timeout_s"], max_step_m=p["max_step_m"],
                                                max_joint_step_rad=p["max_joint_step_rad"]))
        self.watchdog = CommandWatchdog(p["command_timeout_s"])
        self.frame = p["base_frame"]
        self.cameras = [c for c in (s.strip() for s in p["cameras"].split(",")) if c]
        self.camera_every = max(1, int(round(p["rate_hz"] / p["camera_hz"])))
        self.paused = False
        # Lockstep (training in simulation): after the tick at the instant an actor will answer next,
        # simulate on only once its Cartesian target stamped with that instant has arrived.
        self.lockstep_period = 1.0 / p["lockstep_hz"] if p["lockstep_hz"] > 0 else 0.0
        if self.lockstep_period and abs(self.lockstep_period / self.tick_dt - round(self.lockstep_period / self.tick_dt)) > 1e-6:
            raise ParameterError(f"lockstep_hz={p['lockstep_hz']:g} must divide the tick rate ({1.0 / self.tick_dt:g} Hz)")
        self._lock_next: float | None = None  # the instant whose command the simulation waits for
        self._lock_waiting = False
        self.lockstep_waits = 0
        self.lockstep_timeouts = 0

        # --- publishers
        self.pub_joints = self.create_publisher(JointState, "joint_states", STATE_QOS)
        self.pub_tcp = self.create_publisher(PoseStamped, "tcp_pose", STATE_QOS)
        self.pub_twist = self.create_publisher(TwistStamped, "tcp_twist", STATE_QOS)
        self.pub_reward = self.create_publisher(Float64MultiArray, "task/reward", STATE_QOS)
        self.pub_clock = self.create_publisher(Clock, "/clock", CLOCK_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self.pub_objects = {name: self.create_publisher(PoseStamped, f"objects/{name}/pose", STATE_QOS)
                            for name in self.arm.object_poses()}
        self.pub_images = {c: self.create_publisher(Image, f"{c}/image_raw", SENSOR_QOS) for c in self.cameras}
        self.pub_info = {c: self.create_publisher(CameraInfo, f"{c}/camera_info", SENSOR_QOS) for c in self.cameras}

        # --- reusable messages
        self.msg_joints = JointState()
        self.msg_joints.name = list(self.arm.joint_names)
        self.msg_joints.header.frame_id = self.frame
        self.msg_tcp = PoseStamped()
        self.msg_twist = TwistStamped()
        self.msg_clock = Clock()
        self.msg_obj = {name: PoseStamped() for name in self.pub_objects}
        self.msg_reward = Float64MultiArray()
        self.msg_reward.layout.dim = [MultiArrayDimension(label=",".join(REWARD_LAYOUT), size=len(REWARD_LAYOUT),
                                                          stride=len(REWARD_LAYOUT))]
        self.msg_info = {}
        for cam in self.cameras:
            info = CameraInfo()
            w, h, fovy = self.arm.camera_intrinsics(cam)
            convert.camera_info(info, w, h, fovy)
            self.msg_info[cam] = info

        # --- commands and services
        self.create_subscription(Float64MultiArray, "joint_position_controller/commands", self._on_joint_cmd,
                                 COMMAND_QOS)
        self.create_subscription(JointTrajectory, "joint_trajectory_controller/joint_trajectory",
                                 self._on_trajectory, COMMAND_QOS)
        self.create_subscription(PoseStamped, "cartesian_controller/target_pose", self._on_target_pose, COMMAND_QOS)
        self.create_subscription(TwistStamped, "cartesian_controller/target_twist", self._on_target_twist,
                                 COMMAND_QOS)
        self.create_subscription(Float64MultiArray, "gripper_controller/commands", self._on_gripper, COMMAND_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(SetBool, "~/pause", self._on_pause)

        # --- bookkeeping
        self.ticks = 0
        self.overruns = 0
        self.accepted = 0
        self.late_commands = 0  # stamped before the current tick: the sender answered after the next tick
        self.rejected = 0
        self.last_rejection = ""
        self._diag_period = 1.0 / p["diagnostics_hz"]
        self._next_diag = time.monotonic() + self._diag_period
        self._rtf_mark = (time.monotonic(), self.arm.time)
        self.rtf = 0.0
        self.get_logger().info(
            f"simulated Panda: backend={p['backend']} task={p['task']} tick {1.0 / self.tick_dt:.0f} Hz "
            f"({self.physics_steps} physics steps), "
            f"{(f'real time x{self.real_time_factor:g}') if self.real_time else 'as fast as possible'}, "
            f"cameras={self.cameras or 'none'}, objects={list(self.pub_objects)}"
        )
        self._publish_state()

    # --- parameters -------------------------------------------------------------------------------

    def _on_params(self, changes) -> str:
        if "real_time" in changes:
            self.real_time = bool(changes["real_time"])
        return ""

    # --- command handling -------------------------------------------------------------------------

    def _now(self) -> float:
        return self.arm.time

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = f"{topic}: {reason}"
        self.get_logger().warning(f"rejected command on {topic}: {reason}; the arm holds")
        self.arm.hold()
        self.watchdog.holding = True

    def _accept(self) -> None:
        self.accepted += 1
        self.watchdog.feed(self._now())

    def _on_target_pose(self, msg: PoseStamped) -> None:
        pos, quat = convert.pose_to_arrays(msg.pose)
        tcp_pos, tcp_quat = self.arm.tcp_pose()
        v = self.safety.check_cartesian(pos, quat, tcp_pos=tcp_pos, tcp_quat=tcp_quat,
                                        stamp=convert.stamp_to_sec(msg.header.stamp), now=self._now())
        if not v:
            return self._reject("cartesian_controller/target_pose", v.reason)
        self.arm.apply_cartesian_target(v.value, v.extra["quat"])
        self._accept()
        stamp = convert.stamp_to_sec(msg.header.stamp)
        if 0.0 < stamp < self._now() - 1e-9:
            self.late_commands += 1
        if self.lockstep_period and stamp > 0.0 and (self._lock_next is None
                                                     or stamp >= self._lock_next - 0.5 * self.tick_dt):
            self._lock_next = stamp + self.lockstep_period  # the sender's next instant
            self._lock_waiting = False

    def _on_target_twist(self, msg: TwistStamped) -> None:
        lin, ang = convert.twist_to_arrays(msg.twist)
        v = self.safety.check_twist(lin, ang, stamp=convert.stamp_to_sec(msg.header.stamp), now=self._now())
        if not v:
            return self._reject("cartesian_controller/target_twist", v.reason)
        self.arm.apply_twist(v.value[:3], v.value[3:], duration=self.safety.limits.command_timeout_s)
        self._accept()

    def _on_joint_cmd(self, msg: Float64MultiArray) -> None:
        q_now, _ = self.arm.joint_state()
        v = self.safety.check_joint_positions(np.asarray(msg.data), current_q=q_now)
        if not v:
            return self._reject("joint_position_controller/commands", v.reason)
        self.arm.apply_joint_positions(v.value)
        self._accept()

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        topic = "joint_trajectory_controller/joint_trajectory"
        q_now, _ = self.arm.joint_state()
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        positions = [np.asarray(p.positions) for p in msg.points]
        v = self.safety.check_trajectory(times, positions, names=list(msg.joint_names), current_q=q_now,
                                         stamp=convert.stamp_to_sec(msg.header.stamp), now=self._now())
        if not v:
            return self._reject(topic, v.reason)
        self.arm.apply_joint_trajectory(v.extra["times"], v.value)
        # A trajectory is a promise of motion until its end: feed the watchdog for its duration.
        self._accept()
        self.watchdog.last = self._now() + float(v.extra["times"][-1])

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        v = self.safety.check_gripper(np.asarray(msg.data))
        if not v:
            self.rejected += 1
            self.last_rejection = f"gripper_controller/commands: {v.reason}"
            self.get_logger().warning(f"rejected command on gripper_controller/commands: {v.reason}")
            return
        self.arm.apply_gripper(float(v.value[0]))

    def _on_reset(self, request, response):
        self._lock_next, self._lock_waiting = None, False  # the actor answers again after the reset
        self.arm.reset()
        self.watchdog.reset()
        response.success = True
        response.message = f"episode {self.arm.episode} of task {self.arm.task.name} at t={self.arm.time:.3f} s"
        self.get_logger().info(f"reset: {response.message}")
        self._publish_state()
        return response

    def _on_pause(self, request, response):
        self.paused = bool(request.data)
        response.success = True
        response.message = "paused" if self.paused else "running"
        self.get_logger().info(f"simulation {response.message} at t={self.arm.time:.3f} s")
        return response

    # --- the loop ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """One control tick: watchdog, physics, then state (and /clock last, so a node whose
        sim-time timer fires on this clock update already has the state of this instant)."""
        if self.watchdog.check(self._now()):
            self.arm.hold()
            self.get_logger().warning(
                f"no command for {self.watchdog.timeout_s:.2f} s: holding at the measured pose")
        if not self.paused:
            self.arm.step(self.physics_steps)
        self.ticks += 1
        self._publish_state(cameras=self.ticks % self.camera_every == 0)
        if time.monotonic() >= self._next_diag:  # wall-clock period, also when running faster than real time
            self._next_diag += self._diag_period
            self._publish_diagnostics()

    def _stamp(self):
        # The whole time rounded to nanoseconds (convert.set_stamp): t = 24.9999999999996, a float sum
        # of physics steps, is 25 s + 0 ns. (Splitting int(t) off first gave 24 s + 0 ns, a clock one
        # second in the past at about every other whole second.)
        convert.set_stamp(self.msg_clock.clock, self.arm.time)
        return self.msg_clock.clock

    def _publish_state(self, cameras: bool = False) -> None:
        """Publish everything of this instant, /clock last. The slow parts (rendering, reading the
        simulator) come first and the messages then leave back to back, so a node ticking on this
        clock update has its whole observation with the least delay."""
        arm = self.arm
        frames = {cam: arm.render(cam) for cam in self.cameras} if cameras else {}
        q, dq = arm.joint_state()
        pos, quat = arm.tcp_pose()
        lin, ang = arm.tcp_velocity()
        objects = arm.object_poses()
        success, dense = arm.evaluate()

        stamp = self._stamp()
        m = self.msg_joints
        m.header.stamp = stamp
        m.position = convert.float_array(q)
        m.velocity = convert.float_array(dq)
        self.msg_tcp.header.stamp = stamp
        self.msg_tcp.header.frame_id = self.frame
        convert.set_pose(self.msg_tcp.pose, pos, quat)
        self.msg_twist.header.stamp = stamp
        self.msg_twist.header.frame_id = self.frame
        convert.set_twist(self.msg_twist.twist, lin, ang)
        for name, (opos, oquat) in objects.items():
            msg = self.msg_obj[name]
            msg.header.stamp = stamp
            msg.header.frame_id = self.frame
            convert.set_pose(msg.pose, opos, oquat)
        self.msg_reward.data = convert.float_array([arm.time, float(success), dense, float(success), arm.episode])
        images = []
        for cam, frame in frames.items():
            img = Image()
            img.header.stamp = stamp
            img.header.frame_id = cam
            convert.array_to_image(img, frame)
            info = self.msg_info[cam]
            info.header.stamp = stamp
            info.header.frame_id = cam
            images.append((cam, img, info))

        self.pub_joints.publish(m)
        self.pub_tcp.publish(self.msg_tcp)
        self.pub_twist.publish(self.msg_twist)
        for name, msg in self.msg_obj.items():
            self.pub_objects[name].publish(msg)
        self.pub_reward.publish(self.msg_reward)
        for cam, img, info in images:
            self.pub_images[cam].publish(img)
            self.pub_info[cam].publish(info)
        self.pub_clock.publish(self.msg_clock)

    def _publish_diagnostics(self) -> None:
        wall, sim = time.monotonic(), self.arm.time
        w0, s0 = self._rtf_mark
        if wall > w0:
            self.rtf = (sim - s0) / (wall - w0)
        self._rtf_mark = (wall, sim)
        level = "ok"
        message = "running"
        if self.paused:
            message = "paused"
        elif self.real_time and self.rtf < 0.95 * self.real_time_factor:
            level, message = "warn", f"slower than scheduled (RTF {self.rtf:.2f} of {self.real_time_factor:g})"
        if self.watchdog.holding and not self.paused:
            message += ", holding (no fresh command)"
        values = {
            "sim_time_s": sim, "real_time_factor": self.rtf, "ticks": self.ticks, "tick_overruns": self.overruns,
            "commands_accepted": self.accepted, "commands_rejected": self.rejected,
            "late_commands": self.late_commands, "lockstep_waits": self.lockstep_waits,
            "lockstep_timeouts": self.lockstep_timeouts,
            "last_rejection": self.last_rejection, "holding": self.watchdog.holding, "holds": self.watchdog.holds,
            "episode": self.arm.episode, "paused": self.paused, "real_time": self.real_time,
            "real_time_factor_goal": self.real_time_factor,
        }
        self.pub_diag.publish(diagnostic_array(self._stamp(), "sim_bridge: simulated arm", "sim_panda", level,
                                               message, values))

    def run(self) -> None:
        """Tick until shutdown: paced to the wall clock (``real_time``; ``real_time_factor``
        simulated seconds per wall second) or as fast as possible.

        Between ticks the executor serves commands and services, so a command is applied at the
        next tick at the latest. A tick that starts more than one period late counts as an overrun
        (the schedule then restarts from now instead of bursting to catch up)."""
        executor = make_executor(self.context)
        executor.add_node(self)
        if self.params["realtime_priority"]:
            if self.real_time:
                set_realtime_priority(self.params["realtime_priority"], self.get_logger())
            else:  # a SCHED_FIFO loop that never sleeps would starve the machine
                self.get_logger().warning("realtime_priority ignored: real_time is false (the loop never sleeps)")
        next_t = time.monotonic()
        try:
            while self.context.ok():
                if self.real_time:
                    remaining = next_t - time.monotonic()
                    if remaining > 0:
                        executor.spin_once(timeout_sec=remaining)
                        continue
                    period = self.tick_dt / self.real_time_factor
                    if -remaining > period:
                        self.overruns += 1
                        next_t = time.monotonic()
                    next_t += period
                    executor.spin_once(timeout_sec=0.0)
                else:
                    executor.spin_once(timeout_sec=FAST_MODE_WAIT_S)
                    next_t = time.monotonic()
                self.tick()
                if self._lock_next is not None and self._lockstep_wait(executor):
                    next_t = max(next_t, time.monotonic())  # waiting for the actor is not an overrun
        finally:
            executor.remove_node(self)
            executor.shutdown(timeout_sec=0.1)

    def _lockstep_wait(self, executor) -> bool:
        """At the instant a lockstep sender answers next, serve callbacks until its command (stamped
        with this instant) arrives, a reset ends its streak, or ``lockstep_timeout_s`` passes (then
        the simulation goes on, and waits again once a command answers an instant). True if it waited."""
        if self.paused or abs(self.arm.time - self._lock_next) > 0.5 * self.tick_dt:
            return False
        self.lockstep_waits += 1
        self._lock_waiting = True
        deadline = time.monotonic() + self.params["lockstep_timeout_s"]
        while self._lock_waiting and self.context.ok():
            left = deadline - time.monotonic()
            if left <= 0:
                self.lockstep_timeouts += 1
                self._lock_next, self._lock_waiting = None, False
                self.get_logger().warning(
                    f"lockstep: no command for t={self.arm.time:.3f} s within {self.params['lockstep_timeout_s']:g} s "
                    "(wall); simulating on until commands answer again", throttle_duration_sec=5.0)
                break
            executor.spin_once(timeout_sec=min(left, 0.01))
        return True

    def close(self) -> None:
        self.arm.close()


def main(args=None) -> None:
    sys.exit(run_node("sim_bridge", SimBridge, lambda node: node.run(), args=args))


if __name__ == "__main__":
    main()

"""Small pieces every serl_ctrl node shares: QoS profiles, diagnostics, and the ``main`` wrapper.

QoS, chosen on purpose (DESIGN.md): state and commands are reliable (a lost command or joint
state is a bug, and they are small); camera streams use the sensor-data profile (best effort,
shallow queue: a late frame is worth nothing); transitions and weights are reliable, and weights
are transient-local so an actor that starts late still gets the current policy.

Works on Humble, Jazzy and later: only ``rclpy.init`` / ``rclpy.try_shutdown`` and APIs that
exist since Humble.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Mapping

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from .params import ParameterError

STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
SENSOR_QOS = qos_profile_sensor_data
CLOCK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
STREAM_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

EXIT_BAD_PARAMETER = 2

LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


def diagnostic_array(stamp_msg, name: str, hardware_id: str, level: str, message: str,
                     values: Mapping[str, object]) -> DiagnosticArray:
    """One DiagnosticArray holding one status; ``level`` is ok, warn or error."""
    status = DiagnosticStatus()
    status.level = LEVELS[level]
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header.stamp = stamp_msg
    arr.status = [status]
    return arr


def diagnostic_values(arr: DiagnosticArray) -> dict[str, str]:
    """The key/value pairs of the first status of a DiagnosticArray (for tests and tools)."""
    return {kv.key: kv.value for kv in arr.status[0].values} if arr.status else {}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


EXECUTOR_ENV = "SERL_CTRL_ROS_EXECUTOR"


def make_executor(context=None):
    """The executor the nodes spin in.

    rclpy's EventsExecutor (Jazzy and later, ``rclpy.experimental``) when available: measured
    here, it halves the CPU a policy node spends per message (13% vs 22% of a core at 50 Hz
    against sim_bridge) and shortens the ticks. Humble, or ``SERL_CTRL_ROS_EXECUTOR=single``,
    gets the SingleThreadedExecutor. Either way the nodes call ``spin_once`` in a loop that
    checks ``context.ok()`` (the EventsExecutor's ``spin()`` does not return on Ctrl-C).
    """
    choice = os.environ.get(EXECUTOR_ENV, "events").strip().lower()
    if choice not in ("events", "single"):
        raise ParameterError(f"{EXECUTOR_ENV}={choice!r}: use 'events' or 'single'")
    if choice == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble: no EventsExecutor
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def spin_until_shutdown(node, executor=None) -> None:
    """Spin ``node`` until its context shuts down (Ctrl-C, SIGTERM, rclpy.shutdown)."""
    executor = executor or make_executor(node.context)
    executor.add_node(node)
    try:
        while node.context.ok():
            executor.spin_once(timeout_sec=0.2)
    finally:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=1.0)


def set_realtime_priority(priority: int, logger=None) -> bool:
    """Put every thread of this process (the executor and the DDS threads) under SCHED_FIFO at
    ``priority`` (0: leave scheduling alone). Linux only; returns whether it was applied."""
    if priority <= 0:
        return False
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        for tid in tids:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        if logger is not None:
            logger.warning(f"realtime_priority={priority} not applied ({exc}); running with normal scheduling. "
                           "Grant CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf) to use it.")
        return False
    if logger is not None:
        logger.info(f"SCHED_FIFO priority {priority} on {len(tids)} threads")
    return True


def guarded(node, fn: Callable, *args) -> None:
    """Run a message conversion; a malformed message is counted in ``node.errors``, logged
    (throttled) and ignored, so one bad publisher cannot stop a control loop."""
    try:
        fn(*args)
    except ValueError as exc:
        node.errors += 1
        node.get_logger().error(f"ignored a message: {exc}", throttle_duration_sec=5.0)


def subscribe_observations(node, builder, on_tcp: Callable, guard: Callable,
                           after_state: Callable[[], None] | None = None) -> list:
    """Subscribe ``node`` to the topics ``builder`` (a convert.ObservationBuilder) needs, plus
    ``tcp_pose`` always (the action mapping needs the TCP): ``on_tcp(pos, quat, stamp, recv)``.
    ``guard(fn, *args)`` runs conversions that may raise ValueError on a malformed message.
    ``after_state()`` runs after every non-camera message (input-triggered control ticks)."""
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from sensor_msgs.msg import Image, JointState

    from . import convert

    now = time.monotonic
    b = builder

    def then(update: Callable) -> Callable:
        if after_state is None:
            return update

        def run(*args) -> None:
            update(*args)
            after_state()
        return run

    @then
    def tcp(msg) -> None:
        recv = now()
        pos, quat = convert.pose_to_arrays(msg.pose)
        on_tcp(pos, quat, convert.stamp_to_sec(msg.header.stamp), recv)
        b.update_tcp_pose(msg, recv)

    subs = [node.create_subscription(PoseStamped, "tcp_pose", tcp, STATE_QOS)]
    if b.needs("tcp_twist"):
        subs.append(node.create_subscription(TwistStamped, "tcp_twist",
                                             then(lambda m: b.update_tcp_twist(m, now())), STATE_QOS))
    if b.needs("joint_states"):
        subs.append(node.create_subscription(JointState, "joint_states",
                                             then(lambda m: guard(b.update_joint_states, m, now())), STATE_QOS))
    for name in b.objects:
        subs.append(node.create_subscription(PoseStamped, f"objects/{name}/pose",
                                             then(lambda m, n=name: b.update_object(n, m, now())), STATE_QOS))
    for cam in b.cameras:
        subs.append(node.create_subscription(Image, f"{cam}/image_raw",
                                             lambda m, c=cam: guard(b.update_image, c, m, now()), SENSOR_QOS))
    return subs


def run_node(name: str, make: Callable[[], object], spin: Callable[[object], None] | None = None,
             args=None) -> int:
    """``rclpy.init``, build the node, spin it, shut down cleanly; returns the exit code.

    A :class:`ParameterError` while building (a bad parameter value) is logged as one error line
    and gives exit code 2; Ctrl-C and external shutdown end quietly with 0.

    Fast DDS publishes synchronously in our nodes unless ``RMW_FASTRTPS_PUBLICATION_MODE`` is set:
    the default asynchronous mode hands every message to a writer thread, and on a busy 2-core
    machine that hand-off made one ``publish`` cost ~0.7-1 ms instead of ~0.4 ms (profiled in the
    policy node's tick), a third of the 2 ms observation-to-command budget.
    """
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", "SYNCHRONOUS")
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make()
        if spin is not None:
            spin(node)
        else:
            spin_until_shutdown(node)
    except ParameterError as exc:
        rclpy.logging.get_logger(name).error(f"bad parameter: {exc}")
        code = EXIT_BAD_PARAMETER
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def exit_with(code: int) -> None:
    sys.exit(code)

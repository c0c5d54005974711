"""policy_node: runs an exported policy against an arm's topics (a lifecycle node).

Lifecycle (``ros2 lifecycle set /policy_node configure|activate|deactivate|cleanup``, or
``autostart:=true``):

* **configure** loads the policy (``serl_ctrl.runtime.load_policy(policy)``), checks that every
  observation key of its spec can be built from a topic (see :mod:`serl_ctrl.ros.convert` for the
  mapping), subscribes to exactly those topics (plus ``tcp_pose``, which the action mapping needs)
  and creates the command publishers. A spec that cannot be served fails the transition with the
  keys named.
* **activate** resets the policy and starts a fixed-rate timer (``rate_hz``) on the ROS clock
  (simulated time when ``use_sim_time`` is true, as in sim.launch.py). With ``trigger:=inputs``
  there is no timer: a tick runs as soon as every state topic carries the same stamp (the arm's
  update seen completely), at most once per ``1/rate_hz`` of stamp time. That saves the second
  executor wake-up a timer needs after the inputs arrive (rclpy wakes once for ``/clock`` or the
  last message, once more for the timer), about half a millisecond on a small PC, and locks
  the ticks to the arm's updates. If the inputs stop, the ticks stop, and the arm holds.
* **deactivate** stops the timer (or the input trigger): no more commands, so the arm holds after
  its command timeout.

Each tick: build the observation from the latest messages; if any input is missing or older
than ``command_timeout_s`` send nothing (the watchdog; the arm holds). Otherwise act, map the
action to a Cartesian target exactly as ``PandaEnv.step`` does
(:func:`serl_ctrl.envs.actions.action_to_target`), check it with the safety layer and publish
``cartesian_controller/target_pose`` (stamped with the newest observation's stamp, so the arm
can drop it when it is stale) and ``gripper_controller/commands`` ([opening in m]).

A language-conditioned policy (observation ``instruction_embedding``) also subscribes to
``instruction`` (std_msgs/String, from planner_node; reliable, transient-local): the words are
mapped onto a canonical instruction (:func:`serl_ctrl.language.vocabulary.parse`; unknown words are
logged and ignored) and embedded with MiniLM (:mod:`serl_ctrl.language.embedding`). Until a first
instruction arrives the node sends nothing; a new one drops the policy's queued actions, so it acts
on the next tick. ``"stop"`` commands the measured pose (zero motion, gripper as last commanded) on
every tick until another instruction arrives.

Changing the ``policy`` parameter (or publishing a path on ``~/load_policy``) loads the new policy
in a background thread and swaps it in between two ticks; the new policy must take the same
observations and action size. ``/diagnostics`` reports tick latency, observation-to-command
latency, missed ticks, held ticks and the policy version.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray, String

from ..envs.actions import action_to_target
from ..runtime.safety import SafetyFilter, SafetyLimits, stale_inputs
from . import convert
from .common import (COMMAND_QOS, LATCHED_QOS, STATE_QOS, diagnostic_array, guarded, run_node,
                     set_realtime_priority, subscribe_observations)
from .params import POLICY_NODE, declare, on_set_validator

CLOCK_MISMATCH_S = 1e5  # an input this old means sim-time stamps read on a wall clock (or the reverse)
INSTRUCTION_KEY = "instruction_embedding"  # serl_ctrl.language.conditioning.INSTRUCTION_KEY


def default_loader(name_or_path: str, sampler_seed: int | None = None, adaptive_tau: float | None = None):
    """``serl_ctrl.runtime.load_policy`` (imported when first needed)."""
    from ..runtime import load_policy

    return load_policy(name_or_path, sampler_seed=sampler_seed, adaptive_tau=adaptive_tau)


def _percentiles(values) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


class PolicyNode(LifecycleNode):
    """See the module docstring. ``loader(name_or_path)`` returns a policy (tests inject one)."""

    def __init__(self, loader: Callable[[str], Any] | None = None, **kwargs) -> None:
        super().__init__("policy_node", **kwargs)
        self.params = declare(self, POLICY_NODE)
        self.loader = loader or self._load_file
        self.add_on_set_parameters_callback(on_set_validator(POLICY_NODE, self, self._on_params))
        self.policy = None
        self.policy_name = ""
        self.policy_version = 0
        self.builder: convert.ObservationBuilder | None = None
        self.safety: SafetyFilter | None = None
        self._tcp: tuple[np.ndarray, np.ndarray] | None = None
        self._subs: list = []
        self._timer = None
        self._input_trigger = False  # trigger:=inputs and active
        self._next_input_tick: float | None = None
        self._diag_timer = None
        self._pub_target = None
        self._pub_gripper = None
        self._pub_diag = None
        self._load_sub = None
        self._pending = None
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._realtime = False
        self._reset_counters()
        self._msg_target = PoseStamped()
        self._msg_gripper = Float64MultiArray()
        self._instruction_sub = None
        self._embed = None  # instruction -> embedding, for language-conditioned policies
        self.instruction: str | None = None
        self._instruction_emb = None
        self._instruction_new = False
        self._last_gripper = -1.0
        if self.params["autostart"]:
            # After the executor starts, so that the first transition's logs and services work.
            self._autostart_timer = self.create_timer(0.01, self._autostart,
                                                      clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _reset_counters(self) -> None:
        self.ticks = 0
        self.commands = 0
        self.missed_ticks = 0
        self.held_ticks = 0
        self.rejected = 0
        self.errors = 0
        self.last_hold_reason = ""
        self._hold_kind = ""
        self._first_tick: float | None = None
        self._ticks_since_first = 0
        self._missed_base = 0
        self._tick_ms: deque[float] = deque(maxlen=2000)
        self._obs_ms: deque[float] = deque(maxlen=2000)

    # --- policy loading -------------------------------------------------------------------------------

    def _load_file(self, name: str):
        seed = int(self.get_parameter("sampler_seed").value)  # current values, also for hot swaps
        tau = float(self.get_parameter("adaptive_tau").value)
        return default_loader(name, sampler_seed=None if seed < 0 else seed, adaptive_tau=None if tau < -1 else tau)

    def _load(self, name: str):
        policy = self.loader(name)
        spec = policy.spec
        if int(spec.action_dim) not in (4, 5):
            raise ValueError(
                f"policy {name!r} has action_dim {spec.action_dim}; the arm takes (dx, dy, dz, gripper) "
                "or (dx, dy, dz, dyaw, gripper)"
            )
        return policy

    def _on_params(self, changes) -> str:
        if "policy" in changes and self.policy is not None:
            name = changes["policy"]
            if not name:
                return "policy cannot be emptied while configured (cleanup first)"
            if self._loading is not None and self._loading.is_alive():
                return "a policy is already being loaded; try again when it is swapped in"
            self._loading = threading.Thread(target=self._load_in_background, args=(name,), daemon=True)
            self._loading.start()
        return ""

    def _load_in_background(self, name: str) -> None:
        log = self.get_logger()
        try:
            policy = self._load(name)
            old = convert.obs_fields(self.policy.spec.obs)
            new = convert.obs_fields(policy.spec.obs)
            if old != new or int(policy.spec.action_dim) != int(self.policy.spec.action_dim):
                raise ValueError(
                    f"it takes observations {new} / action_dim {policy.spec.action_dim}, the running policy "
                    f"{old} / {self.policy.spec.action_dim}: deactivate, cleanup and configure to change them"
                )
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the running policy
            log.error(f"new policy {name!r} not loaded, keeping {self.policy_name!r}: {exc}")
            return
        with self._lock:
            self._pending = (policy, name)
        log.info(f"policy {name!r} loaded; swapping it in at the next tick")

    def _swap_if_pending(self) -> None:
        if self._pending is None:
            return
        with self._lock:
            policy, name = self._pending
            self._pending = None
        policy.reset()
        self.policy, self.policy_name = policy, name
        self.policy_version += 1
        self.get_logger().info(f"running policy {name!r} (version {self.policy_version})")

    def _on_load_request(self, msg: String) -> None:
        result = self.set_parameters([Parameter("policy", Parameter.Type.STRING, msg.data)])[0]
        if not result.successful:
            self.get_logger().error(f"~/load_policy {msg.data!r} refused: {result.reason}")

    # --- lifecycle ------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        p = self.params = {**self.params, **{k: self.get_parameter(k).value for k in self.params}}
        if not p["policy"]:
            log.error("configure failed: set the 'policy' parameter (a .onnx path or a name in policies/)")
            return TransitionCallbackReturn.FAILURE
        try:
            policy = self._load(p["policy"])
            language = INSTRUCTION_KEY in policy.spec.obs
            builder = convert.ObservationBuilder({k: v for k, v in policy.spec.obs.items() if k != INSTRUCTION_KEY})
            if language:
                from ..language.conditioning import InstructionTable

                self._embed = InstructionTable()
                self._embed("stop")  # builds MiniLM now, not at the first instruction
        except Exception as exc:  # noqa: BLE001 - report any loading problem and stay unconfigured
            log.error(f"configure failed: policy {p['policy']!r}: {exc}")
            return TransitionCallbackReturn.FAILURE
        spec = policy.spec
        control_hz = float(getattr(spec, "control_hz", p["rate_hz"]))
        if abs(control_hz - p["rate_hz"]) > 1e-6:
            log.warning(f"rate_hz={p['rate_hz']} but the policy was trained at control_hz={control_hz}: "
                        "its actions are position steps per tick, so the arm will move at a different speed")
        self.policy, self.policy_name, self.policy_version = policy, p["policy"], 1
        self.builder = builder
        self.safety = SafetyFilter(SafetyLimits(command_timeout_s=p["command_timeout_s"], max_step_m=p["max_step_m"],
                                                max_joint_step_rad=p["max_joint_step_rad"]))
        self._subscribe()
        self._pub_target = self.create_lifecycle_publisher(PoseStamped, "cartesian_controller/target_pose", COMMAND_QOS)
        self._pub_gripper = self.create_lifecycle_publisher(Float64MultiArray, "gripper_controller/commands",
                                                            COMMAND_QOS)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self._load_sub = self.create_subscription(String, "~/load_policy", self._on_load_request, COMMAND_QOS)
        if self._embed is not None:
            self._instruction_sub = self.create_subscription(String, "instruction", self._on_instruction, LATCHED_QOS)
        self._diag_timer = self.create_timer(1.0 / p["diagnostics_hz"], self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        topics = ["tcp_pose"] + [s.topic for s in builder.sources if s.kind != "tcp_pose"]
        log.info(f"configured: policy {self.policy_name!r}, observations {list(builder.fields)} from {topics}")
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self) -> None:
        def on_tcp(pos, quat, stamp, recv) -> None:
            self._tcp = (pos, quat, stamp, recv)

        after = self._on_state_input if self.params["trigger"] == "inputs" else None
        self._subs = subscribe_observations(self, self.builder, on_tcp, self._guard, after)

    def _on_state_input(self) -> None:
        """trigger:=inputs: tick when the state topics complete an update, once per period."""
        if not self._input_trigger or self._tcp is None:
            return
        t = self.builder.synced_stamp()
        if t is None or t != self._tcp[2]:
            return
        period = 1.0 / self.params["rate_hz"]
        nxt = self._next_input_tick
        if nxt is not None and nxt - period - 1e-6 <= t < nxt - 1e-6:
            return  # inside the current period (a clock that jumped back starts over)
        self._next_input_tick = t + period
        self._tick(now=t)

    def _on_instruction(self, msg: String) -> None:
        """A new instruction (language-conditioned policies): canonical words only, never executed."""
        from ..language.vocabulary import COMMANDS, parse

        text = msg.data
        cmd = COMMANDS.get(text) or parse(text)
        if cmd is None:
            self.get_logger().warning(f"instruction not understood, keeping {self.instruction!r}: {text!r}",
                                      throttle_duration_sec=2.0)
            return
        if cmd.instruction == self.instruction:
            return
        if cmd.kind != "stop":
            try:
                emb = self._embed(cmd.instruction)
            except Exception as exc:  # noqa: BLE001 - a broken encoder must not kill the node; the arm holds
                self.errors += 1
                self.get_logger().error(f"cannot embed instruction {cmd.instruction!r}: {exc}")
                return
            with self._lock:
                self._instruction_emb = emb
        with self._lock:
            self.instruction = cmd.instruction
            self._instruction_new = True
        self.get_logger().info(f"instruction: {cmd.instruction!r}")

    def _guard(self, fn, *args) -> None:
        guarded(self, fn, *args)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.params["realtime_priority"] and not self._realtime:
            self._realtime = set_realtime_priority(self.params["realtime_priority"], self.get_logger())
        self.policy.reset()
        self._reset_counters()
        if self.params["trigger"] == "inputs":
            self._next_input_tick, self._input_trigger = None, True
        else:
            self._timer = self.create_timer(1.0 / self.params["rate_hz"], self._tick)
        self.get_logger().info(f"active: {self.params['rate_hz']:g} Hz on the "
                               f"{'simulated' if self.get_parameter('use_sim_time').value else 'system'} clock"
                               f"{', ticks triggered by the inputs' if self._input_trigger else ''}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._input_trigger = False
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        self.get_logger().info("inactive: no more commands (the arm holds after its command timeout)")
        return super().on_deactivate(state)

    def _teardown(self) -> None:
        self._input_trigger = False
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        if self._load_sub is not None:
            self.destroy_subscription(self._load_sub)
            self._load_sub = None
        for pub in (self._pub_target, self._pub_gripper):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._pub_diag is not None:
            self.destroy_publisher(self._pub_diag)
        self._pub_target = self._pub_gripper = self._pub_diag = None
        if self._instruction_sub is not None:
            self.destroy_subscription(self._instruction_sub)
            self._instruction_sub = None
        self.policy = self.builder = None
        self._tcp = None
        self._pending = None
        self._embed = None
        self.instruction = self._instruction_emb = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    # --- the control tick -----------------------------------------------------------------------------

    def _tick(self, now: float | None = None) -> None:
        """One control step. ``now``: the inputs' stamp (trigger:=inputs), else the ROS clock."""
        start = time.monotonic()
        if now is None:
            now = self.get_clock().now().nanoseconds * 1e-9
        self.ticks += 1
        # Missed ticks: the timer skips a period when it is served more than a period late, so
        # count the periods elapsed since the first tick against the ticks that ran. (A tick that
        # is merely late is not missed: the next one comes on schedule.)
        if self._first_tick is None or now < self._first_tick:  # first tick, or the clock jumped back
            self._first_tick, self._ticks_since_first, self._missed_base = now, 0, self.missed_ticks
        self._ticks_since_first += 1
        period = 1.0 / self.params["rate_hz"]
        expected = int((now - self._first_tick) / period + 1e-6) + 1
        self.missed_ticks = max(self.missed_ticks, self._missed_base + expected - self._ticks_since_first)
        self._swap_if_pending()

        stamps = dict(self.builder.stamps())
        stamps["tcp_pose"] = self._tcp[2] if self._tcp is not None else None
        stale = stale_inputs(stamps, now, self.params["command_timeout_s"])
        if stale:
            return self._hold("stale:" + ",".join(sorted(stale)), "; ".join(f"{k}: {v}" for k, v in stale.items()),
                              now, stamps)
        language = self._embed is not None
        if language and self.instruction is None:
            return self._hold("instruction", "no instruction yet (planner_node publishes it on 'instruction')",
                              now, stamps)
        try:
            if language:
                with self._lock:
                    instruction, emb, new = self.instruction, self._instruction_emb, self._instruction_new
                    self._instruction_new = False
                if new and hasattr(self.policy, "flush"):
                    self.policy.flush()  # the new instruction acts on this tick, not after the queued chunk
            if language and instruction == "stop":
                action = np.zeros(int(self.policy.spec.action_dim), np.float32)  # the measured pose: no motion
                action[-1] = self._last_gripper  # the gripper as last commanded: a held object stays held
            else:
                obs = self.builder.build()
                if language:
                    obs[INSTRUCTION_KEY] = emb
                action = self.policy.act(obs)
                self._last_gripper = float(np.asarray(action)[-1])
            pos, quat = self._tcp[0], self._tcp[1]
            yaw_step = self.params["yaw_step"] if int(self.policy.spec.action_dim) == 5 else None
            target = action_to_target(action, pos, quat, pos_step=self.params["pos_step"], yaw_step=yaw_step)
        except Exception as exc:  # noqa: BLE001 - a failing policy must not kill the node; the arm holds
            self.errors += 1
            return self._hold("error", f"policy error: {exc}", now, stamps)
        verdict = self.safety.check_cartesian(target.position, target.quaternion, tcp_pos=pos, tcp_quat=quat)
        if not verdict:
            self.rejected += 1
            return self._hold("safety", f"safety: {verdict.reason}", now, stamps)

        obs_stamp, obs_recv = self.builder.newest()
        if obs_stamp is None or self._tcp[2] > obs_stamp:
            obs_stamp, obs_recv = self._tcp[2], self._tcp[3]
        elif self._tcp[2] == obs_stamp:
            obs_recv = min(obs_recv, self._tcp[3])
        msg = self._msg_target
        convert.fill_header(msg.header, obs_stamp, self.params["frame_id"])
        convert.set_pose(msg.pose, target.position, target.quaternion)
        self._pub_target.publish(msg)
        self._msg_gripper.data = convert.float_array([target.gripper_width])
        self._pub_gripper.publish(self._msg_gripper)
        done = time.monotonic()
        self.commands += 1
        self.last_hold_reason = self._hold_kind = ""
        self._tick_ms.append((done - start) * 1e3)
        self._obs_ms.append((done - obs_recv) * 1e3)

    def _hold(self, kind: str, reason: str, now: float, stamps) -> None:
        """Send nothing this tick. Logged once per kind of hold (which inputs, or why), not per tick."""
        self.held_ticks += 1
        known = [t for t in stamps.values() if t is not None]
        if known and abs(now - min(known)) > CLOCK_MISMATCH_S:
            kind += ":clock"
            reason += (" - the inputs are stamped on another clock: set use_sim_time true when the arm is "
                       "simulated (sim_bridge stamps in simulated time), false for a real arm")
        if kind != self._hold_kind:
            self.get_logger().warning(f"sending nothing, the arm holds: {reason}")
            self._hold_kind = kind
        self.last_hold_reason = reason

    # --- diagnostics ----------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        if self._pub_diag is None:
            return
        tick50, tick99 = _percentiles(self._tick_ms)
        obs50, obs99 = _percentiles(self._obs_ms)
        active = self._timer is not None
        level, message = "ok", "running" if active else "inactive"
        if active and self.held_ticks and self.last_hold_reason:
            level, message = "warn", f"holding: {self.last_hold_reason}"
        if self.missed_ticks:
            level = "warn"
        values = {
            "policy": self.policy_name, "policy_version": self.policy_version, "rate_hz": self.params["rate_hz"],
            "ticks": self.ticks, "commands": self.commands, "missed_ticks": self.missed_ticks,
            "held_ticks": self.held_ticks, "rejected": self.rejected, "errors": self.errors,
            "tick_latency_p50_ms": tick50, "tick_latency_p99_ms": tick99,
            "obs_to_command_p50_ms": obs50, "obs_to_command_p99_ms": obs99,
            "policy_infer_ms": getattr(self.policy, "last_infer_ms", None) if self.policy is not None else None,
        }
        self._pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), "policy_node: control loop",
                                                self.policy_name, level, message, values))

    def stats(self) -> dict[str, Any]:
        """The diagnostics values as numbers (for tests and benchmarks)."""
        tick50, tick99 = _percentiles(self._tick_ms)
        obs50, obs99 = _percentiles(self._obs_ms)
        return {"ticks": self.ticks, "commands": self.commands, "missed_ticks": self.missed_ticks,
                "held_ticks": self.held_ticks, "rejected": self.rejected, "errors": self.errors,
                "policy_version": self.policy_version, "tick_p50_ms": tick50, "tick_p99_ms": tick99,
                "obs_to_command_p50_ms": obs50, "obs_to_command_p99_ms": obs99}


def main(args=None) -> None:
    sys.exit(run_node("policy_node", PolicyNode, args=args))


if __name__ == "__main__":
    main()

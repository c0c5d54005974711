"""actor_node: acts on an arm with the current policy plus exploration and streams transitions.

The distributed half of SERL's actor/learner split, over ROS 2 only (the learner may run on
another machine, in the same ROS_DOMAIN_ID). Each tick (``rate_hz``, ROS clock: simulated time
from sim_bridge in train.launch.py):

1. build the observation from the latest messages (same topics and conversion as policy_node);
   inputs older than ``command_timeout_s`` break the transition chain and send nothing;
2. finish the previous step: (prev_obs, prev_action, reward, obs, terminated, truncated, seq,
   actor_id) with the reward of this instant from ``task/reward`` (sim_bridge's simulated reward
   classifier ``[stamp, sparse, dense, success, episode]``; the ``reward`` parameter picks sparse
   or dense). With sparse rewards an episode ``terminated`` on success; with dense rewards it
   does not (as the gym environment: lingering at the goal keeps paying), and ``truncated`` after
   ``max_episode_steps``. Publish it on ``transitions`` (sequence numbers count up by one, so
   the learner sees every loss; a random session id tells the learner when an actor restarted);
3. at an episode's end call ``sim_bridge/reset`` (std_srvs/Trigger) and wait for the new episode;
4. otherwise act: uniformly random for the first ``random_steps`` steps, then a sample of the
   current policy version's tanh-Gaussian; map it to a Cartesian target exactly as PandaEnv.step
   (envs.actions), check it (runtime.safety) and publish target + gripper. Before the first
   policy version has arrived (and after the random steps) the actor sends nothing.

Policy versions arrive as ONNX files on ``policy/onnx`` (transient-local: the latest reaches a
late actor). Each is checked against its sha256 (a mismatch is logged and ignored, the running
version stays) and loaded by onnxruntime in a background thread, then swapped in at the start
of a tick, so no tick waits for a load. The policy path is NumPy + onnxruntime only: this node
imports no torch (``serl_ctrl.runtime.exploration``).
"""

from __future__ import annotations

import sys
import threading
import uuid

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, UInt8MultiArray
from std_srvs.srv import Trigger

from ..envs.actions import action_to_target
from ..runtime.exploration import ExplorationPolicy
from ..runtime.safety import SafetyFilter, SafetyLimits, stale_inputs
from . import convert, transport
from .common import (COMMAND_QOS, LATCHED_QOS, STATE_QOS, STREAM_QOS, diagnostic_array, guarded, run_node,
                     subscribe_observations)
from .params import ACTOR_NODE, ParameterError, declare, on_set_validator


class ActorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("actor_node", **kwargs)
        p = self.params = declare(self, ACTOR_NODE)
        self.add_on_set_parameters_callback(on_set_validator(ACTOR_NODE, self))
        from ..envs.tasks import TASKS

        try:
            obs_space, act_space = transport.env_spaces(p["task"], p["obs"])
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        self.action_space = act_space
        self.reward_mode = p["reward"]
        self.session = uuid.uuid4().hex[:16]
        self.builder = convert.ObservationBuilder({k: (s.shape, s.dtype) for k, s in obs_space.spaces.items()})
        self.max_steps = p["max_episode_steps"] or TASKS[p["task"]].max_episode_steps
        self.safety = SafetyFilter(SafetyLimits(command_timeout_s=p["command_timeout_s"], max_step_m=p["max_step_m"],
                                                max_joint_step_rad=p["max_joint_step_rad"]))
        self.rng = np.random.default_rng(p["seed"])
        self.actor_id = p["actor_id"]

        self._tcp = None
        self._reward = None  # (stamp, sparse, dense, success, episode)
        self._subs = subscribe_observations(self, self.builder, self._on_tcp, self._guard)
        self.create_subscription(Float64MultiArray, "task/reward", self._on_reward, STATE_QOS)
        self.create_subscription(UInt8MultiArray, "policy/onnx", self._on_policy, LATCHED_QOS)
        self.pub_target = self.create_publisher(PoseStamped, "cartesian_controller/target_pose", COMMAND_QOS)
        self.pub_gripper = self.create_publisher(Float64MultiArray, "gripper_controller/commands", COMMAND_QOS)
        self.pub_transitions = self.create_publisher(UInt8MultiArray, "transitions", STREAM_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self.reset_client = self.create_client(Trigger, "sim_bridge/reset")

        self.policy: ExplorationPolicy | None = None
        self.policy_version = -1  # none yet
        self.policy_sha256 = ""
        self.learner_id = ""
        self.policy_swaps = 0
        self.rejected_policies = 0
        self._incoming = None  # (policy, meta) loaded in the background, swapped in at the next tick
        self._policy_lock = threading.Lock()
        self.seq = 0
        self.total_steps = 0
        self.episode_steps = 0
        self.episodes = 0
        self.episode_return = 0.0
        self.returns: list[float] = []
        self.successes = 0
        self.held_ticks = 0
        self.missed_ticks = 0
        self.irregular_steps = 0
        self.misaligned_rewards = 0
        self.errors = 0
        self._prev = None  # (obs, action, policy version or -1 for random, obs stamp) awaiting its outcome
        self._episode_success = False
        self._pending = None  # (obs, stamp) of a tick waiting for the reward of its instant
        self._phase = "acting"  # acting | resetting (service call) | awaiting (the new episode's state)
        self._reset_future = None
        self._reset_started = 0.0
        self._episode_before = 0
        self._hold_reason = ""
        self._msg_target = PoseStamped()
        self._msg_gripper = Float64MultiArray()
        self.timer = self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.create_timer(1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"actor {self.actor_id}: task={p['task']} obs={p['obs']} reward={self.reward_mode} {p['rate_hz']:g} Hz, "
            f"episodes of {self.max_steps} steps, {p['random_steps']} random steps first; observations "
            f"{list(self.builder.fields)}; policy versions from policy/onnx"
        )

    # --- inputs -----------------------------------------------------------------------------------

    def _on_tcp(self, pos, quat, stamp, recv) -> None:
        self._tcp = (pos, quat, stamp)

    def _guard(self, fn, *args) -> None:
        guarded(self, fn, *args)

    def _on_reward(self, msg: Float64MultiArray) -> None:
        d = np.asarray(msg.data, dtype=np.float64)
        if d.size < 5:
            return
        self._reward = tuple(float(v) for v in d[:5])
        if self._pending is not None and self._reward[0] >= self._pending[1] - 1e-9:
            obs, stamp = self._pending
            self._pending = None
            self._step(obs, stamp)

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        """A policy version arrived: decode it here; check (sha256, task, spaces) and load it in the
        background."""
        try:
            data, meta = transport.msg_to_onnx(msg)
            version = int(meta["policy_version"])
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop acting
            return self._reject_policy(f"malformed policy message: {exc}")
        if not self._is_newer(meta):
            return
        threading.Thread(target=self._load_policy, args=(data, meta, version), daemon=True,
                         name=f"load_policy_{version}").start()

    def _is_newer(self, meta: dict, than=None) -> bool:
        """A version from another learner process (restarted) or a higher one from the same."""
        cur_id, cur_version = than if than is not None else (self.learner_id, self.policy_version)
        return meta.get("learner_id", "") != cur_id or int(meta["policy_version"]) > cur_version

    def _load_policy(self, data: bytes, meta: dict, version: int) -> None:
        try:
            if meta.get("task") not in (None, self.params["task"]) or meta.get("obs") not in (None, self.params["obs"]):
                raise ValueError(f"it was trained for task={meta.get('task')} obs={meta.get('obs')}, this actor "
                                 f"runs task={self.params['task']} obs={self.params['obs']}")
            if meta.get("reward") not in (None, self.reward_mode):
                raise ValueError(f"the learner trains on {meta['reward']} rewards, this actor sends "
                                 f"{self.reward_mode} ones")
            policy = ExplorationPolicy(data, sha256=str(meta["sha256"]))
            fields = convert.obs_fields(policy.spec.obs)
            if fields != self.builder.fields or policy.spec.action_dim != int(np.prod(self.action_space.shape)):
                raise ValueError(f"it takes observations {fields} and {policy.spec.action_dim}-d actions; this actor "
                                 f"builds {self.builder.fields} and sends {self.action_space.shape[0]}-d actions")
        except Exception as exc:  # noqa: BLE001 - any failure keeps the running version
            return self._reject_policy(f"policy version {version} ignored, keeping version {self.policy_version}: "
                                       f"{exc}")
        with self._policy_lock:
            pending = self._incoming
            if pending is None or self._is_newer(meta, (pending[1].get("learner_id", ""),
                                                        int(pending[1]["policy_version"]))):
                self._incoming = (policy, meta)

    def _reject_policy(self, why: str) -> None:
        self.rejected_policies += 1
        self.errors += 1
        self.get_logger().error(why)

    def _swap_if_pending(self) -> None:
        """Between ticks: take the newest loaded version (a cheap reference swap)."""
        if self._incoming is None:
            return
        with self._policy_lock:
            policy, meta = self._incoming
            self._incoming = None
        if self.policy is not None and not self._is_newer(meta):
            return
        first = self.policy is None
        self.policy = policy
        self.policy_version = int(meta["policy_version"])
        self.policy_sha256 = str(meta["sha256"])
        self.learner_id = str(meta.get("learner_id", ""))
        self.policy_swaps += 1
        log = self.get_logger()
        if first:
            log.info(f"policy version {self.policy_version} loaded (sha256 {self.policy_sha256[:12]})")
        else:
            log.info(f"policy version {self.policy_version} swapped in", throttle_duration_sec=10.0)

    # --- the control tick -----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        now = self._now()
        self._pending = None
        self._swap_if_pending()
        if self._resetting(now):
            return
        stamps = dict(self.builder.stamps())
        stamps["tcp_pose"] = self._tcp[2] if self._tcp is not None else None
        stamps["task/reward"] = self._reward[0] if self._reward is not None else None
        stale = stale_inputs(stamps, now, self.params["command_timeout_s"])
        if stale:
            return self._hold("; ".join(f"{k}: {v}" for k, v in stale.items()))
        obs = self.builder.build()
        obs_stamp, _ = self.builder.newest()
        if self._reward[0] < obs_stamp - 1e-9:
            # The reward of this instant is still on its way (another topic): finish the step
            # when it arrives (see _on_reward), a fraction of a millisecond later.
            self._pending = (obs, obs_stamp)
            return
        self._step(obs, obs_stamp)

    def _step(self, obs, obs_stamp: float) -> None:
        """Finish the previous step with this observation and its reward, then act."""
        stamp, sparse, dense, success, _episode = self._reward
        reward = dense if self.reward_mode == "dense" else sparse
        if self._prev is not None:
            prev_obs, prev_action, prev_version, prev_stamp = self._prev
            duration, period = obs_stamp - prev_stamp, 1.0 / self.params["rate_hz"]
            if abs(duration - period) > 0.01 * period:
                self.irregular_steps += 1  # a late tick (the simulator did not wait): not one period long
                if duration > 1.5 * period:
                    self.missed_ticks += 1
            if abs(stamp - obs_stamp) > 1e-6:
                self.misaligned_rewards += 1
            self._episode_success |= bool(success >= 0.5)
            terminated = bool(success >= 0.5) and self.reward_mode == "sparse"
            truncated = self.episode_steps >= self.max_steps and not terminated
            arrays = transport.transition_arrays(prev_obs, prev_action, float(reward), obs, terminated, truncated,
                                                 self.seq, self.actor_id)
            self.pub_transitions.publish(transport.transition_msg(
                arrays, prev_version, reward=self.reward_mode, session=self.session))
            self.seq += 1
            self.total_steps += 1
            self.episode_return += float(reward)
            self._prev = None
            if terminated or truncated:
                self.successes += int(self._episode_success)
                return self._end_episode(self._now())
        version = self.policy_version
        if self.total_steps < self.params["random_steps"]:
            action = self.rng.uniform(self.action_space.low, self.action_space.high).astype(np.float32)
            version = -1
        elif self.policy is None:
            return self._hold("no policy yet: waiting for the first version on policy/onnx")
        else:
            try:
                action = self.policy.act(obs, self.rng)
            except ValueError as exc:
                return self._hold(f"policy: {exc}")
        pos, quat, tcp_stamp = self._tcp
        try:
            target = action_to_target(action, pos, quat, pos_step=self.params["pos_step"])
        except ValueError as exc:
            return self._hold(f"action: {exc}")
        verdict = self.safety.check_cartesian(target.position, target.quaternion, tcp_pos=pos, tcp_quat=quat)
        if not verdict:
            return self._hold(f"safety: {verdict.reason}")
        # The gripper first: the Cartesian target ends this tick's commands (sim_bridge's lockstep
        # simulates on when it arrives).
        self._msg_gripper.data = convert.float_array([target.gripper_width])
        self.pub_gripper.publish(self._msg_gripper)
        convert.fill_header(self._msg_target.header, obs_stamp, "panda_link0")
        convert.set_pose(self._msg_target.pose, target.position, target.quaternion)
        self.pub_target.publish(self._msg_target)
        self._prev = (obs, action, version, obs_stamp)
        self.episode_steps += 1
        self._hold_reason = ""

    def _hold(self, reason: str) -> None:
        """Send nothing; the pending step has no valid outcome, so the transition chain breaks."""
        self.held_ticks += 1
        self._prev = None
        if reason.split(":")[0] != self._hold_reason.split(":")[0]:
            self.get_logger().warning(f"sending nothing, the arm holds: {reason}")
        self._hold_reason = reason

    # --- episodes -------------------------------------------------------------------------------------

    def _end_episode(self, now: float) -> None:
        self.episodes += 1
        self.returns.append(self.episode_return)
        self.get_logger().info(f"episode {self.episodes}: return {self.episode_return:.2f} in "
                               f"{self.episode_steps} steps; resetting")
        self.episode_return = 0.0
        self.episode_steps = 0
        self._episode_success = False
        self._request_reset(now)

    def _request_reset(self, now: float) -> None:
        """Ask sim_bridge for a new episode; acting resumes once its state arrives."""
        self._phase = "resetting"
        self._reset_started = now
        self._episode_before = int(self._reward[4]) if self._reward is not None else 0
        ready = self.reset_client.service_is_ready()
        self._reset_future = self.reset_client.call_async(Trigger.Request()) if ready else None

    def _resetting(self, now: float) -> bool:
        """True while an episode reset is in progress (nothing is sent meanwhile)."""
        if self._phase == "acting":
            return False
        timeout = self.params["reset_timeout_s"]
        if self._phase == "resetting":
            future = self._reset_future
            if future is not None and future.done():
                result = future.result()
                if result is not None and result.success:
                    self._phase = "awaiting"
                    return True
                self.get_logger().error(f"reset failed ({getattr(result, 'message', 'no answer')}); asking again")
                self._request_reset(now)
            elif now - self._reset_started > timeout:
                self.get_logger().error(f"no answer from sim_bridge/reset in {timeout:g} s; asking again")
                self._request_reset(now)
            elif future is None and self.reset_client.service_is_ready():
                self._reset_future = self.reset_client.call_async(Trigger.Request())
            return True
        # awaiting the first state of the new episode (sim_bridge publishes it when it resets)
        if self._reward is not None and int(self._reward[4]) > self._episode_before:
            self._phase = "acting"
            return False
        if now - self._reset_started > timeout:
            self.get_logger().error("the new episode's state did not arrive; asking for a reset again")
            self._request_reset(now)
        return True

    # --- diagnostics ------------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        recent = self.returns[-10:]
        values = {
            "actor_id": self.actor_id, "seq": self.seq, "env_steps": self.total_steps, "episodes": self.episodes,
            "successes": self.successes, "mean_return_last_10": float(np.mean(recent)) if recent else float("nan"),
            "policy_version": self.policy_version, "policy_sha256": self.policy_sha256[:16],
            "policy_swaps": self.policy_swaps, "rejected_policies": self.rejected_policies, "reward": self.reward_mode,
            "held_ticks": self.held_ticks, "missed_ticks": self.missed_ticks,
            "irregular_steps": self.irregular_steps,
            "misaligned_rewards": self.misaligned_rewards, "errors": self.errors,
        }
        level = "warn" if self._hold_reason else "ok"
        self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), "actor_node: acting",
                                               f"actor_{self.actor_id}", level, self._hold_reason or "acting", values))


def main(args=None) -> None:
    sys.exit(run_node("actor_node", ActorNode, args=args))


if __name__ == "__main__":
    main()

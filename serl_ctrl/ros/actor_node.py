"""actor_node: acts on an arm with the current policy plus exploration and streams transitions.

The distributed half of SERL's actor/learner split, over ROS 2 only (the learner may run on
another machine, in the same ROS_DOMAIN_ID). Each tick (``rate_hz``, ROS clock: simulated time
from sim_bridge in train.launch.py):

1. build the observation from the latest messages (same topics and conversion as policy_node);
   inputs older than ``command_timeout_s`` break the transition chain and send nothing;
2. finish the previous step: ``Transition(prev_obs, prev_action, reward, obs, terminated,
   truncated, seq, actor_id)`` with the reward of this instant from ``task/reward`` (sim_bridge's
   simulated reward classifier; sparse: 1 on success), ``terminated`` on success and
   ``truncated`` after ``max_episode_steps``; publish it on ``transitions`` (sequence numbers
   count up by one, so the learner sees every loss);
3. at an episode's end call ``sim_bridge/reset`` (std_srvs/Trigger) and wait for the new episode;
4. otherwise act: uniformly random for the first ``random_steps`` steps, then the SAC actor's
   stochastic action (``SACAgent.act``); map it to a Cartesian target exactly as PandaEnv.step
   (envs.actions), check it (runtime.safety) and publish target + gripper.

New actor weights arrive on ``policy/weights`` and are loaded between two ticks.
"""

from __future__ import annotations

import sys

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, UInt8MultiArray
from std_srvs.srv import Trigger

from ..envs.actions import action_to_target
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
        from ..agents.sac import SACAgent, Transition
        from ..envs.tasks import TASKS

        self._Transition = Transition
        try:
            obs_space, act_space = transport.env_spaces(p["task"], p["obs"])
            config = transport.sac_config(p["sac_config"])
        except (ValueError, FileNotFoundError) as exc:
            raise ParameterError(str(exc)) from None
        self.action_space = act_space
        self.agent = SACAgent(obs_space, act_space, config, seed=p["seed"])
        self.builder = convert.ObservationBuilder({k: (s.shape, s.dtype) for k, s in obs_space.spaces.items()})
        self.max_steps = p["max_episode_steps"] or TASKS[p["task"]].max_episode_steps
        self.safety = SafetyFilter(SafetyLimits(command_timeout_s=p["command_timeout_s"], max_step_m=p["max_step_m"],
                                                max_joint_step_rad=p["max_joint_step_rad"]))
        self.rng = np.random.default_rng(p["seed"])
        self.actor_id = p["actor_id"]

        self._tcp = None
        self._reward = None  # (stamp, reward, dense, success, episode)
        self._subs = subscribe_observations(self, self.builder, self._on_tcp, self._guard)
        self.create_subscription(Float64MultiArray, "task/reward", self._on_reward, STATE_QOS)
        self.create_subscription(UInt8MultiArray, "policy/weights", self._on_weights, LATCHED_QOS)
        self.pub_target = self.create_publisher(PoseStamped, "cartesian_controller/target_pose", COMMAND_QOS)
        self.pub_gripper = self.create_publisher(Float64MultiArray, "gripper_controller/commands", COMMAND_QOS)
        self.pub_transitions = self.create_publisher(UInt8MultiArray, "transitions", STREAM_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", STATE_QOS)
        self.reset_client = self.create_client(Trigger, "sim_bridge/reset")

        self.policy_version = 0
        self.seq = 0
        self.total_steps = 0
        self.episode_steps = 0
        self.episodes = 0
        self.episode_return = 0.0
        self.returns: list[float] = []
        self.successes = 0
        self.held_ticks = 0
        self.misaligned_rewards = 0
        self.errors = 0
        self._prev = None  # (obs, action) awaiting its outcome
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
            f"actor {self.actor_id}: task={p['task']} obs={p['obs']} {p['rate_hz']:g} Hz, episodes of "
            f"{self.max_steps} steps, {p['random_steps']} random steps first; observations {list(self.builder.fields)}"
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

    def _on_weights(self, msg: UInt8MultiArray) -> None:
        try:
            state, meta = transport.msg_to_weights(msg)
            version = int(meta["policy_version"])
            if version <= self.policy_version and self.policy_version > 0:
                return
            self.agent.load_actor_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - bad weights must not stop acting
            self.errors += 1
            self.get_logger().error(f"ignored actor weights: {exc}")
            return
        self.policy_version = version
        self.get_logger().info(f"policy version {version} loaded", throttle_duration_sec=10.0)

    # --- the control tick -----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        now = self._now()
        self._pending = None
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
        stamp, reward, _dense, success, _episode = self._reward
        if self._prev is not None:
            if abs(stamp - obs_stamp) > 1e-6:
                self.misaligned_rewards += 1
            terminated = bool(success >= 0.5)
            truncated = self.episode_steps >= self.max_steps and not terminated
            prev_obs, prev_action = self._prev
            t = self._Transition(prev_obs, prev_action, float(reward), obs, terminated, truncated, seq=self.seq,
                                 actor_id=self.actor_id)
            self.pub_transitions.publish(transport.transition_to_msg(t, self.policy_version))
            self.seq += 1
            self.total_steps += 1
            self.episode_return += float(reward)
            self._prev = None
            if terminated or truncated:
                self.successes += int(terminated)
                return self._end_episode(self._now())
        if self.total_steps < self.params["random_steps"]:
            action = self.rng.uniform(self.action_space.low, self.action_space.high).astype(np.float32)
        else:
            action = np.asarray(self.agent.act(obs), dtype=np.float32)
        pos, quat, tcp_stamp = self._tcp
        try:
            target = action_to_target(action, pos, quat, pos_step=self.params["pos_step"])
        except ValueError as exc:
            return self._hold(f"action: {exc}")
        verdict = self.safety.check_cartesian(target.position, target.quaternion, tcp_pos=pos, tcp_quat=quat)
        if not verdict:
            return self._hold(f"safety: {verdict.reason}")
        convert.fill_header(self._msg_target.header, obs_stamp, "panda_link0")
        convert.set_pose(self._msg_target.pose, target.position, target.quaternion)
        self.pub_target.publish(self._msg_target)
        self._msg_gripper.data = convert.float_array([target.gripper_width])
        self.pub_gripper.publish(self._msg_gripper)
        self._prev = (obs, action)
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
            "policy_version": self.policy_version, "held_ticks": self.held_ticks,
            "misaligned_rewards": self.misaligned_rewards, "errors": self.errors,
        }
        level = "warn" if self._hold_reason else "ok"
        self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), "actor_node: acting",
                                               f"actor_{self.actor_id}", level, self._hold_reason or "acting", values))


def main(args=None) -> None:
    sys.exit(run_node("actor_node", ActorNode, args=args))


if __name__ == "__main__":
    main()

"""Every ROS parameter of the serl_ctrl nodes, in one table per node, with descriptions and ranges.

The tables are plain data (no rclpy import; the task, backend and camera names come from
serl_ctrl.envs), so the launch-file and config tests can check the
parameter names without ROS. :func:`declare` turns a table into ``declare_parameter`` calls with
a ``ParameterDescriptor`` (description, range, read-only) and validates the values the node was
started with; a bad value raises :class:`ParameterError` whose message says what to change, and
the node's ``main`` logs it and exits with code 2. :func:`on_set_validator` rejects bad runtime
changes (``ros2 param set``) with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..envs.backend import BACKENDS
from ..envs.panda_env import OBS_MODES, REWARDS as REWARD_MODES
from ..envs.scene import CAMERAS as _SCENE_CAMERAS
from ..envs.tasks import TASKS as _TASKS

__all__ = [
    "ACTOR_NODE", "LEARNER_NODE", "NODES", "PLANNER_NODE", "POLICY_NODE", "Param", "ParameterError", "SIM_BRIDGE",
    "SPEECH_NODE",
    "declare", "on_set_validator", "validate",
]

TASKS = tuple(_TASKS)
CAMERAS = tuple(c.name for c in _SCENE_CAMERAS)


class ParameterError(ValueError):
    """A parameter value is not allowed; the message names it and says what is."""


@dataclass(frozen=True)
class Param:
    """One parameter: name, default (its type is the parameter's type), description, limits."""

    name: str
    default: Any
    description: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = True
    check: Callable[[Any], str] | None = None  # extra check: returns "" or why the value is bad

    def constraints(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"range [{self.lo}, {self.hi}]")
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.read_only:
            parts.append("read-only (set at start-up)")
        return "; ".join(parts)


def _cameras(value: str) -> str:
    names = [c for c in (s.strip() for s in value.split(",")) if c]
    bad = [c for c in names if c not in CAMERAS]
    if bad:
        return f"unknown cameras {bad}; the scene has {list(CAMERAS)} (comma-separated, '' for none)"
    if len(set(names)) != len(names):
        return "cameras are listed twice"
    return ""


# Safety limits shared by the nodes that command the arm (sim_bridge checks what it receives;
# the policy and actor nodes check what they send).
def _safety(sender: bool) -> tuple[Param, ...]:
    timeout = (
        "Observations older than this (ROS time, s) make the node send nothing, so the arm holds; "
        "also the stamp age the arm accepts." if sender else
        "Commands stamped longer ago than this are rejected as stale, and after this long without an "
        "accepted command the arm holds (reference latched at the measured pose). Seconds of ROS time."
    )
    return (
        Param("command_timeout_s", 0.5, timeout, 0.01, 10.0),
        Param("max_step_m", 0.08, "Largest distance of a Cartesian target from the measured TCP in one "
              "command (m); farther targets are rejected.", 0.001, 0.5),
        Param("max_joint_step_rad", 0.3, "Largest change of any joint from its measured position in one "
              "command (rad); larger jumps are rejected.", 0.001, 1.5),
    )


SIM_BRIDGE: tuple[Param, ...] = (
    Param("backend", "mujoco", "Physics engine of the simulated arm.", choices=BACKENDS),
    Param("task", "pickcube", "Task scene and randomised resets (objects, targets, reward).", choices=TASKS),
    Param("rate_hz", 100.0, "Control tick rate: state, /clock and object poses are published once per "
          "tick, and the physics (500 Hz) advances round(500 / rate_hz) steps per tick.", 10.0, 500.0),
    Param("real_time", True, "true: pace ticks to the wall clock (at real_time_factor); false: run as "
          "fast as the CPU allows (simulated time still drives /clock, but the simulation does not wait "
          "for anyone: nodes ticking on /clock fall behind, and their stamped commands turn stale).",
          read_only=False),
    Param("real_time_factor", 1.0, "Simulated seconds per wall-clock second when real_time is true: 1 on a "
          "robot-like schedule; above 1 trains faster in simulation (with lockstep_hz, so that a slow actor "
          "makes the simulation wait instead of acting late).", 0.1, 20.0),
    Param("lockstep_hz", 0.0, "Training in simulation: wait, every 1/lockstep_hz of simulated time (the "
          "actor's control rate, in the actor's phase), for the Cartesian target answering that instant "
          "before simulating on, so no step is late or longer than one period whatever the machine's load. "
          "0: never wait (as a real arm). Must divide the tick rate.", 0.0, 100.0),
    Param("lockstep_timeout_s", 0.5, "Longest wall-clock wait for that command; then the simulation goes "
          "on and waits again only once a command answers an instant (an actor that resets, holds or "
          "stopped).", 0.01, 10.0),
    Param("cameras", "", "Comma-separated cameras to publish as <cam>/image_raw + <cam>/camera_info "
          "(sensor-data QoS): front, wrist; '' for none.", check=_cameras),
    Param("camera_hz", 15.0, "Camera frame rate (rendered every round(rate_hz / camera_hz) ticks).", 1.0, 60.0),
    Param("image_size", 128, "Side of the square camera images (pixels).", 16, 512),
    Param("seed", 0, "Seed of the first episode; later resets continue the same random stream.", 0, 2**31 - 1),
    Param("base_frame", "panda_link0", "frame_id of poses and twists (the robot base, at the world origin)."),
    Param("diagnostics_hz", 1.0, "Rate of /diagnostics (real-time factor, tick overruns, holds, rejected "
          "commands).", 0.1, 10.0),
    Param("realtime_priority", 0, "SCHED_FIFO priority (1-98) for every thread of this process, as "
          "ros2_control's thread_priority; 0 keeps normal scheduling. Needs CAP_SYS_NICE or an rtprio "
          "limit (a PREEMPT_RT robot PC is set up so); refused with a warning otherwise.", 0, 98),
    *_safety(sender=False),
)

POLICY_NODE: tuple[Param, ...] = (
    Param("policy", "", "Policy to run: a path to an exported .onnx file or the name of a policy in "
          "policies/ (serl_ctrl.runtime.load_policy). Changing it at run time loads the new policy "
          "in the background and swaps it in between two ticks.", read_only=False),
    Param("rate_hz", 10.0, "Control rate (timer on the ROS clock). Should equal the policy's "
          "control_hz: a policy acts in position steps per tick.", 10.0, 50.0),
    Param("sampler_seed", -1, "Files exported with --sampler runtime or graph-noise: draw fresh "
          "Gaussian sampler noise per action chunk from this seed (multimodal demonstrations need it); "
          "-1 feeds zeros, the noise's mode, as the default export. Other files refuse a seed. Read at "
          "every policy load (configure, or a new 'policy').", -1, 2**31 - 1, read_only=False),
    Param("adaptive_tau", -2.0, "Chunked policies: SGAC's adaptive chunking. Predict a chunk every tick "
          "and replace the queued one when the cosine similarity between its next action and the fresh "
          "first action drops below this (0.9 doubled success on PickCube when the cube was moved "
          "mid-grasp, bench_imitation table 3); below -1 (the default): off, each chunk's n_action_steps "
          "run open loop. Read at every policy load (configure, or a new 'policy').", -2.0, 1.0,
          read_only=False),
    Param("trigger", "timer", "What starts a control tick: 'timer' (every 1/rate_hz on the ROS clock) or "
          "'inputs' (as soon as every state topic carries the same stamp, at most once per 1/rate_hz of "
          "stamp time: one wake-up less, ~0.5 ms less latency, ticks locked to the arm's updates; no "
          "inputs, no commands, so the arm holds).", choices=("timer", "inputs")),
    Param("pos_step", 0.03, "Metres of target motion per unit action per tick (PandaEnv's pos_step).",
          0.001, 0.1),
    Param("yaw_step", 0.2, "Radians of yaw per unit action per tick, for 5-D (yaw) policies.", 0.0, 1.0),
    Param("frame_id", "panda_link0", "frame_id of the Cartesian targets sent (the robot base)."),
    Param("diagnostics_hz", 1.0, "Rate of /diagnostics (tick latency, missed ticks, policy version).",
          0.1, 10.0),
    Param("autostart", False, "Configure and activate right after start-up, without a lifecycle manager "
          "(the launch files set it)."),
    Param("realtime_priority", 0, "SCHED_FIFO priority (1-98) for every thread of this process, as "
          "ros2_control's thread_priority; 0 keeps normal scheduling. Needs CAP_SYS_NICE or an rtprio "
          "limit (a PREEMPT_RT robot PC is set up so); refused with a warning otherwise.", 0, 98),
    *_safety(sender=True),
)

ACTOR_NODE: tuple[Param, ...] = (
    Param("task", "pickcube", "Task being learned (observation and action spaces, episode length).",
          choices=TASKS),
    Param("obs", "state", "Observation mode of the policy: state, pixels or both.", choices=OBS_MODES),
    Param("rate_hz", 10.0, "Control rate of the actor (timer on the ROS clock).", 1.0, 50.0),
    Param("actor_id", 0, "Identifies this actor's transition stream (several actors may feed one "
          "learner).", 0, 1000),
    Param("seed", 0, "Seed of the exploration noise and the random warm-up actions.", 0, 2**31 - 1),
    Param("random_steps", 200, "Env steps acted uniformly at random before the policy takes over.",
          0, 10**9),
    Param("max_episode_steps", 0, "Steps per episode before the actor resets the arm (0: the task's "
          "default).", 0, 100000),
    Param("reward", "sparse", "Reward sent with each transition, from task/reward: sparse (1 on success; "
          "the episode ends at success) or dense (shaped, in [0, 1]; the episode runs to max_episode_steps, "
          "as the gym environment with reward='dense'). Must match the learner's.", choices=REWARD_MODES),
    Param("pos_step", 0.03, "Metres of target motion per unit action per tick.", 0.001, 0.1),
    Param("reset_timeout_s", 10.0, "How long to wait for the simulator's reset service (s).", 0.1, 120.0),
    *_safety(sender=True),
)

LEARNER_NODE: tuple[Param, ...] = (
    Param("task", "pickcube", "Task being learned (must match the actors').", choices=TASKS),
    Param("obs", "state", "Observation mode: state, pixels or both (must match the actors').",
          choices=OBS_MODES),
    Param("reward", "sparse", "Reward mode the actors send (sparse or dense); transitions with another are "
          "dropped and counted, and demos must have been recorded with it.", choices=REWARD_MODES),
    Param("sac_config", "", "YAML file with the SAC configuration ('' for defaults)."),
    Param("seed", 0, "Seed of the networks and the replay sampling.", 0, 2**31 - 1),
    Param("demos", "", "Folder of demonstration episodes (serl-ctrl demos, same task, obs and reward) "
          "for RLPD's 50/50 demo/online batches, as serl-ctrl train --demos; '' for none."),
    Param("publish_every", 50, "Publish a new policy version (ONNX on policy/onnx) every this many "
          "policy updates.", 1, 10**6),
    Param("checkpoint_dir", "", "Folder for periodic atomic checkpoints of the whole learner (networks, "
          "optimisers, replay, counters); '' for none."),
    Param("checkpoint_every", 5000, "Write a checkpoint every this many received env steps (and one at "
          "shutdown), when checkpoint_dir is set.", 1, 10**9),
    Param("resume", False, "Continue from the newest checkpoint in checkpoint_dir (a fresh start, with a "
          "warning, when there is none)."),
    Param("threads", 0, "Torch threads for the updates (0: torch's default; 1 is fair on a machine shared with "
          "the simulator and the actor).", 0, 256),
    Param("device", "auto", "Torch device of the updates: auto (a CUDA GPU when there is one), cpu, cuda or "
          "cuda:N. Policy versions are always exported from a CPU copy."),
    Param("diagnostics_hz", 1.0, "Rate of /diagnostics (env steps, updates, sequence gaps).", 0.1, 10.0),
)

SPEECH_NODE: tuple[Param, ...] = (
    Param("wav_files", "", "Comma-separated WAV files to recognise one after the other instead of the "
          "microphone (tests, recorded commands); '' listens to the audio device."),
    Param("wav_period_s", 1.0, "Seconds before each WAV file is recognised (the first one included), so "
          "subscribers can connect first.", 0.0, 60.0),
    Param("device", "", "Audio input device (a sounddevice name or number); '' is the system default. "
          "Used when wav_files is ''."),
    Param("min_confidence", 0.15, "Recognitions below this confidence give a transcript but no correction "
          "(unrecognised speech changes nothing); 'stop' is never rejected.", 0.0, 1.0),
)

PLANNER_NODE: tuple[Param, ...] = (
    Param("planner", "", "The planner to run: a folder (or NAME.json) written by `serl-ctrl train-planner` "
          "or `serl-ctrl finetune-planner`."),
    Param("rate_hz", 10.0, "Rate at which the planner decides and publishes the instruction (timer on the "
          "ROS clock); the policy's control rate is a good choice.", 1.0, 50.0),
    Param("hold_steps", 10, "Planner ticks a correction overrides the planner at most (it also ends when the "
          "planner agrees and then moves on).", 1, 1000),
    Param("dwell", 1, "Ticks a different planner instruction must win in a row before it is published "
          "(1: at once; 2 damps flicker between two instructions).", 1, 10),
    Param("corrections_log", "", "Write every correction with its observation history to this .npz file "
          "(atomically, after each one) for `serl-ctrl finetune-planner`; '' keeps no log."),
    Param("command_timeout_s", 0.5, "Observations older than this (ROS time, s) make the planner skip its "
          "tick (no new instruction); corrections still go out at once.", 0.01, 10.0),
)

NODES: dict[str, tuple[Param, ...]] = {
    "sim_bridge": SIM_BRIDGE,
    "policy_node": POLICY_NODE,
    "actor_node": ACTOR_NODE,
    "learner_node": LEARNER_NODE,
    "speech_node": SPEECH_NODE,
    "planner_node": PLANNER_NODE,
}


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string"}.get(type(value), type(value).__name__)


def validate(param: Param, value: Any) -> str:
    """Why ``value`` is not allowed for ``param`` ("" when it is)."""
    expected = type(param.default)
    if expected is float and type(value) is int:
        value = float(value)
    if type(value) is not expected:
        hint = f" (write {param.default!r}-style, e.g. {value}.0)" if expected is float and type(value) is int else ""
        return f"parameter {param.name!r} must be a {_type_name(param.default)}, got {value!r}{hint}"
    if param.lo is not None and not param.lo <= value <= param.hi:
        return f"parameter {param.name!r} = {value!r} is outside its range [{param.lo}, {param.hi}]"
    if param.choices is not None and value not in param.choices:
        return f"parameter {param.name!r} = {value!r} is not one of: {', '.join(param.choices)}"
    if param.check is not None:
        why = param.check(value)
        if why:
            return f"parameter {param.name!r} = {value!r}: {why}"
    return ""


def _descriptor(param: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    text = param.description
    desc = ParameterDescriptor(description=text, read_only=param.read_only,
                               additional_constraints=param.constraints())
    if param.lo is not None:
        if type(param.default) is int:
            desc.integer_range = [IntegerRange(from_value=int(param.lo), to_value=int(param.hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(param.lo), to_value=float(param.hi),
                                                            step=0.0)]
    return desc


def declare(node, table: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter of ``table`` on ``node`` and return their values by name.

    Raises :class:`ParameterError` for an override of the wrong type, out of range or not among
    the choices, naming the parameter and the allowed values.
    """
    from rclpy.exceptions import ParameterException

    values = {}
    for param in table:
        try:
            p = node.declare_parameter(param.name, param.default, _descriptor(param))
        except ParameterException as exc:
            # rclpy's own range/type check fired: say it our way (with what is allowed).
            raise ParameterError(f"parameter {param.name!r}: {exc}; allowed: {param.constraints() or 'see description'}"
                                 f" - {param.description}") from None
        why = validate(param, p.value)
        if why:
            raise ParameterError(why)
        values[param.name] = p.value
    return values


def on_set_validator(table: Sequence[Param], node=None, apply: Callable[[Mapping[str, Any]], str] | None = None):
    """A callback for ``add_on_set_parameters_callback`` that rejects bad values with the reason.

    ``apply(changes)`` may veto a valid change by returning a reason (or "" to accept it).
    """
    from rcl_interfaces.msg import SetParametersResult

    by_name = {p.name: p for p in table}

    def callback(params) -> SetParametersResult:
        changes = {}
        for p in params:
            spec = by_name.get(p.name)
            if spec is None:  # use_sim_time and other built-ins
                continue
            why = validate(spec, p.value)
            if why:
                if node is not None:
                    node.get_logger().error(f"rejected: {why}")
                return SetParametersResult(successful=False, reason=why)
            changes[p.name] = p.value
        if apply is not None and changes:
            why = apply(changes)
            if why:
                return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)

    return callback

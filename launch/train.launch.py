"""Distributed RL in simulation: sim_bridge + actor_node + learner_node (SERL's actor/learner split).

    ros2 launch serl_ctrl train.launch.py task:=reach reward:=dense demos:=/path/demos \
        [sac_config:=/path/sac.yaml] [checkpoint_dir:=/path/ckpt resume:=true] [real_time_factor:=3.0] \
        [learner:=false]

The actor acts on sim_bridge at the control rate on simulated time (in lockstep: the simulation
waits for each of its commands, so real_time_factor above 1 trains faster without late steps) and
streams transitions; the learner trains (with the demos in half of every batch, when given) and
publishes each new policy version as ONNX on policy/onnx, which the actor swaps in. To train on
another machine (a GPU workstation), launch with learner:=false here and start the learner there,
in the same ROS_DOMAIN_ID: ``ros2 run serl_ctrl learner_node --ros-args --params-file config/learner_node.yaml``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    config = PathJoinSubstitution([FindPackageShare("serl_ctrl"), "config"])
    task = ParameterValue(LaunchConfiguration("task"), value_type=str)
    obs = ParameterValue(LaunchConfiguration("obs"), value_type=str)
    sac_config = ParameterValue(LaunchConfiguration("sac_config"), value_type=str)
    reward = ParameterValue(LaunchConfiguration("reward"), value_type=str)
    args = [
        DeclareLaunchArgument("task", default_value="pickcube", description="reach, pickcube, push or insert"),
        DeclareLaunchArgument("obs", default_value="state", description="observation mode: state, pixels or both"),
        DeclareLaunchArgument("backend", default_value="mujoco", description="physics engine: mujoco or pybullet"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="cameras sim_bridge publishes (front,wrist for obs pixels/both)"),
        DeclareLaunchArgument("reward", default_value="sparse", description="sparse or dense (actor and learner)"),
        DeclareLaunchArgument("sac_config", default_value="", description="SAC configuration YAML ('' = defaults)"),
        DeclareLaunchArgument("demos", default_value="",
                              description="folder of demonstration episodes for 50/50 batches ('' = none)"),
        DeclareLaunchArgument("checkpoint_dir", default_value="", description="learner checkpoints ('' = none)"),
        DeclareLaunchArgument("resume", default_value="false", description="continue from the newest checkpoint"),
        DeclareLaunchArgument("rate_hz", default_value="10.0", description="actor control rate"),
        DeclareLaunchArgument("real_time_factor", default_value="1.0",
                              description="simulated seconds per wall second (above 1: faster training)"),
        DeclareLaunchArgument("learner", default_value="true",
                              description="also start the learner here (false: it runs on another machine)"),
    ]
    sim_bridge = Node(
        package="serl_ctrl",
        executable="sim_bridge",
        name="sim_bridge",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "sim_bridge.yaml"]),
            {
                "task": task,
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "cameras": ParameterValue(LaunchConfiguration("cameras"), value_type=str),
                "real_time_factor": ParameterValue(LaunchConfiguration("real_time_factor"), value_type=float),
                # lockstep with the actor: the simulation waits for each of its commands
                "lockstep_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
                "use_sim_time": False,
            },
        ],
    )
    actor = Node(
        package="serl_ctrl",
        executable="actor_node",
        name="actor_node",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "actor_node.yaml"]),
            {
                "task": task,
                "obs": obs,
                "reward": reward,
                "rate_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
                "use_sim_time": True,
            },
        ],
    )
    learner = Node(
        package="serl_ctrl",
        executable="learner_node",
        name="learner_node",
        output="screen",
        condition=IfCondition(LaunchConfiguration("learner")),
        parameters=[
            PathJoinSubstitution([config, "learner_node.yaml"]),
            {
                "task": task,
                "obs": obs,
                "reward": reward,
                "sac_config": sac_config,
                "demos": ParameterValue(LaunchConfiguration("demos"), value_type=str),
                "checkpoint_dir": ParameterValue(LaunchConfiguration("checkpoint_dir"), value_type=str),
                "resume": ParameterValue(LaunchConfiguration("resume"), value_type=bool),
            },
        ],
    )
    return LaunchDescription([*args, sim_bridge, actor, learner])

"""The language hierarchy on the simulated arm: sim_bridge + policy_node + planner_node + speech_node.

    ros2 launch serl_ctrl language.launch.py policy:=RUN/policy.onnx planner:=PLANNER \
        [wav_files:=a.wav,b.wav] [corrections_log:=corrections.npz] [backend:=pybullet] [task:=pickcube]

speech_node turns speech (the microphone, or the WAV files given) into ``transcript`` and
``correction``; planner_node publishes the ``instruction`` in force (its own choice, or the latest
correction) and logs corrections; policy_node runs the language-conditioned policy on that
instruction against sim_bridge's topics. Typed corrections: ``ros2 topic pub --once /correction
std_msgs/msg/String "{data: 'move a bit to the left'}"``. Everything else comes from
config/<node>.yaml. On a real arm, start robot.launch.py's policy node with the planner and speech
nodes of this file instead of sim_bridge.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    config = PathJoinSubstitution([FindPackageShare("serl_ctrl"), "config"])
    args = [
        DeclareLaunchArgument("policy", description="language-conditioned policy: a .onnx path (serl-ctrl train "
                              "--language) or a name in policies/"),
        DeclareLaunchArgument("planner", description="planner folder (serl-ctrl train-planner / finetune-planner)"),
        DeclareLaunchArgument("wav_files", default_value="",
                              description="comma-separated WAV files to recognise instead of the microphone"),
        DeclareLaunchArgument("corrections_log", default_value="",
                              description="write corrections with their observations to this .npz ('' for none)"),
        DeclareLaunchArgument("backend", default_value="mujoco", description="physics engine: mujoco or pybullet"),
        DeclareLaunchArgument("task", default_value="pickcube", description="reach, pickcube, push or insert"),
        DeclareLaunchArgument("rate_hz", default_value="10.0", description="policy and planner rate (control_hz)"),
    ]
    sim_bridge = Node(
        package="serl_ctrl",
        executable="sim_bridge",
        name="sim_bridge",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "sim_bridge.yaml"]),
            {
                "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
                "task": ParameterValue(LaunchConfiguration("task"), value_type=str),
                "use_sim_time": False,
            },
        ],
    )
    policy_node = Node(
        package="serl_ctrl",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "policy_node.yaml"]),
            {
                "policy": ParameterValue(LaunchConfiguration("policy"), value_type=str),
                "rate_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
                "autostart": True,
                "use_sim_time": True,
            },
        ],
    )
    planner_node = Node(
        package="serl_ctrl",
        executable="planner_node",
        name="planner_node",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "planner_node.yaml"]),
            {
                "planner": ParameterValue(LaunchConfiguration("planner"), value_type=str),
                "corrections_log": ParameterValue(LaunchConfiguration("corrections_log"), value_type=str),
                "rate_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
                "use_sim_time": True,
            },
        ],
    )
    speech_node = Node(
        package="serl_ctrl",
        executable="speech_node",
        name="speech_node",
        output="screen",
        parameters=[
            PathJoinSubstitution([config, "speech_node.yaml"]),
            {"wav_files": ParameterValue(LaunchConfiguration("wav_files"), value_type=str)},
        ],
    )
    return LaunchDescription([*args, sim_bridge, policy_node, planner_node, speech_node])

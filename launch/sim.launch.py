"""The simulated arm and a policy running on it: sim_bridge + policy_node.

    ros2 launch serl_ctrl sim.launch.py policy:=pickcube_sac_state [backend:=pybullet] [task:=pickcube]
        [cameras:=front,wrist] [rate_hz:=10.0] [real_time:=true]

sim_bridge speaks the topics of a ros2_control arm and publishes /clock; the policy node runs on
that simulated clock (use_sim_time true) and starts active (autostart). Everything else comes from
config/sim_bridge.yaml and config/policy_node.yaml. The same policy node reaches a real arm with
robot.launch.py.
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
        DeclareLaunchArgument("policy", description="policy to run: a .onnx path or a name in policies/"),
        DeclareLaunchArgument("backend", default_value="mujoco", description="physics engine: mujoco or pybullet"),
        DeclareLaunchArgument("task", default_value="pickcube", description="reach, pickcube, push or insert"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="cameras sim_bridge publishes, comma-separated (front,wrist); '' for none"),
        DeclareLaunchArgument("rate_hz", default_value="10.0", description="policy rate (its control_hz)"),
        DeclareLaunchArgument("real_time", default_value="true",
                              description="pace the simulation to the wall clock (false: as fast as possible)"),
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
                "cameras": ParameterValue(LaunchConfiguration("cameras"), value_type=str),
                "real_time": ParameterValue(LaunchConfiguration("real_time"), value_type=bool),
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
    return LaunchDescription([*args, sim_bridge, policy_node])

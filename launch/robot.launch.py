"""A policy on a real arm: policy_node against a ros2_control-style robot's topics.

    ros2 launch serl_ctrl robot.launch.py policy:=/path/to/policy.onnx \
        joint_states:=/franka/joint_states tcp_pose:=/franka/tcp_pose \
        target_pose:=/cartesian_impedance_controller/equilibrium_pose ...

Every topic the node uses is a launch argument, remapped onto the node's names, so a robot is
reached by remapping only (the node is the one sim.launch.py runs against sim_bridge). The node
runs on the system clock (use_sim_time false), starts active (autostart), and sends nothing when
an observation is older than command_timeout_s (config/policy_node.yaml).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# (node's topic, launch argument, default, what it is)
TOPICS = [
    ("joint_states", "joint_states", "/joint_states", "sensor_msgs/JointState of the arm (by joint name)"),
    ("tcp_pose", "tcp_pose", "/tcp_pose", "geometry_msgs/PoseStamped of the TCP in the base frame"),
    ("tcp_twist", "tcp_twist", "/tcp_twist", "geometry_msgs/TwistStamped of the TCP"),
    ("cartesian_controller/target_pose", "target_pose", "/cartesian_controller/target_pose",
     "geometry_msgs/PoseStamped target of the Cartesian impedance controller"),
    ("gripper_controller/commands", "gripper_commands", "/gripper_controller/commands",
     "std_msgs/Float64MultiArray [opening in m] for the gripper"),
    ("front/image_raw", "front_image", "/front/image_raw", "front camera (sensor_msgs/Image)"),
    ("wrist/image_raw", "wrist_image", "/wrist/image_raw", "wrist camera (sensor_msgs/Image)"),
    ("objects/cube/pose", "cube_pose", "/objects/cube/pose", "perception: pose of the cube (pickcube policies)"),
]


def generate_launch_description() -> LaunchDescription:
    config = PathJoinSubstitution([FindPackageShare("serl_ctrl"), "config"])
    args = [
        DeclareLaunchArgument("policy", description="policy to run: a .onnx path or a name in policies/"),
        DeclareLaunchArgument("rate_hz", default_value="10.0", description="policy rate (its control_hz)"),
        DeclareLaunchArgument("frame_id", default_value="panda_link0", description="base frame of the targets"),
        *[DeclareLaunchArgument(arg, default_value=default, description=text) for _, arg, default, text in TOPICS],
    ]
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
                "frame_id": ParameterValue(LaunchConfiguration("frame_id"), value_type=str),
                "autostart": True,
                "use_sim_time": False,
            },
        ],
        remappings=[(topic, LaunchConfiguration(arg)) for topic, arg, _, _ in TOPICS],
    )
    return LaunchDescription([*args, policy_node])

"""serl_ctrl: sample-efficient robot learning, from simulation to a ROS 2 robot.

Importing the package is cheap: heavy dependencies (torch, mujoco, pybullet, rclpy)
are imported by the submodules that need them. ``import serl_ctrl.envs`` registers the
gymnasium environments ``serl_ctrl/Panda<Task>-v0``.
"""

__version__ = "0.1.0"

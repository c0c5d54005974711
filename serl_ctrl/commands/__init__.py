"""The subcommands of ``serl-ctrl``: each module holds ``add_arguments(parser)`` and ``run(args)``.

They only parse arguments and call the library; the work itself lives in envs/, data/, agents/ ...
"""

"""CLI subcommands, one module per stage. Each module has ``register(subparsers)``.

Every command is a few lines over the Python API: parse, call, print.
"""

COMMAND_MODULES = [
    "faceprobe.commands.data",
    "faceprobe.commands.embed",
    "faceprobe.commands.heads",
    "faceprobe.commands.report",
    "faceprobe.commands.identity",
    "faceprobe.commands.finetune",
    "faceprobe.commands.landmarks",
    "faceprobe.commands.serve",
]

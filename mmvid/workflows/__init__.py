"""What the commands do, above the library: resolve the workspace, run, and report with Rich (``mmvid.api`` and the
CLI call these). Imports of the library happen inside the functions: checking a command's options imports no torch.

- :mod:`mmvid.workflows.prepare`: ``run_prepare`` and its report;
- :mod:`mmvid.workflows.train`: ``run_train``, resuming, the lines it prints; ``list_plugins``;
- :mod:`mmvid.workflows.demo`: ``run_demo``.
"""

from mmvid.workflows.demo import run_demo
from mmvid.workflows.prepare import print_cache_info, run_prepare
from mmvid.workflows.train import checkpoints_line, list_plugins, resume_message, run_train

__all__ = ["run_demo", "print_cache_info", "run_prepare", "checkpoints_line", "list_plugins", "resume_message", "run_train"]

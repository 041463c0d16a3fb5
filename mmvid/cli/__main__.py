"""``python -m mmvid.cli`` (and ``torchrun -m mmvid.cli``): the ``mmvid`` program."""

import sys

import mmvid.cli  # noqa: F401  (registers the commands)
from mmvid.cli.app import main

sys.exit(main())

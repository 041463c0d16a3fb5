"""``python -m mmvid.cli`` (and ``torchrun -m mmvid.cli``): the ``mmvid`` program."""

import sys

from mmvid.cli.app import main
import mmvid.cli  # noqa: F401  (registers the commands)

sys.exit(main())

"""Entry point of `python -m qixtui_demo`."""

import sys

from qixtui_demo.cli import main

sys.exit(main())

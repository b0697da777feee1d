"""`python -m qixtui` runs the command line."""

from qixtui.cli import main

main()

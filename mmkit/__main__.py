"""`python -m mmkit ...` is the `mmkit` command (so is `torchrun ... -m mmkit TOOL ...`)."""
import sys

from mmkit.cli import main

sys.exit(main())

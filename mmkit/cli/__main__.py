"""`python -m mmkit.cli ...` is the `mmkit` command (subprocess tests and benchmarks use it)."""
import sys

from mmkit.cli import main

sys.exit(main())

import sys

from qsens.cli import main

sys.exit(main())

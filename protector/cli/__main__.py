"""`python -m protector.cli` runs `vigil`."""

import sys

from protector.cli.app import main

sys.exit(main())

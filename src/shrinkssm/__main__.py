"""``python -m shrinkssm ...`` is the ``shrinkssm`` command."""

import sys

from shrinkssm.cli import main

sys.exit(main())

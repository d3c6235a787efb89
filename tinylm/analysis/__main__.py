import sys

from tinylm.analysis.cli import main

sys.exit(main())

import sys

from modelswarm.cli import main

sys.exit(main())

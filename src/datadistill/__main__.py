import sys

from datadistill.cli import main

sys.exit(main())

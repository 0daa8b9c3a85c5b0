import sys

from secondthoughts.cli import main

sys.exit(main())

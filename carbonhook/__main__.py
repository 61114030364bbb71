import sys

from carbonhook.cli import main

sys.exit(main())

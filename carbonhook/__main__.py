import sys

from carbonhook.cli.arguments import main

sys.exit(main())

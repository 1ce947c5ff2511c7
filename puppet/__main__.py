import sys

from puppet.cli import main

sys.exit(main())

import sys

from qfa.app.cli import main

sys.exit(main())

import sys

from runner.dashboard.main import main

sys.exit(main())

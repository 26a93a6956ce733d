import sys

from imcluster.cli import main

sys.exit(main())

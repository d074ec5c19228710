import sys

from trimformer.cli import main

sys.exit(main())

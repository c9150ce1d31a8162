import sys

from topo_ep.cli import main

sys.exit(main())

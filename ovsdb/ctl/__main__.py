"""python -m ovsdb.ctl: mbxctl."""

import sys

from ovsdb.ctl import main

sys.exit(main())

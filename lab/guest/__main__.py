import sys

from lab.guest import main

sys.exit(main())

import sys

from jmvae.cli import main

sys.exit(main())

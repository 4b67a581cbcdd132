import sys

from gpuguard.cli import main

sys.exit(main(["extender", *sys.argv[1:]]))

import sys

from gpuguard.cli import main

sys.exit(main(["webhook", *sys.argv[1:]]))

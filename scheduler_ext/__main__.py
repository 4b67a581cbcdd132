import sys

from gpuguard.cli_support import service_main
from scheduler_ext.cli import HELP, add_extender_arguments, run_extender

sys.exit(service_main("python -m scheduler_ext", HELP, add_extender_arguments, run_extender))

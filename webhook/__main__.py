import sys

from gpuguard.cli_support import service_main
from webhook.cli import WEBHOOK_HELP, add_webhook_arguments, run_webhook

sys.exit(service_main("python -m webhook", WEBHOOK_HELP, add_webhook_arguments, run_webhook))

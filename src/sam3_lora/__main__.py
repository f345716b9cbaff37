"""``python -m sam3_lora`` = ``sam3-lora``."""

import sys

from sam3_lora.cli import main

sys.exit(main())

"""``python -m sam3_lora.cli`` = ``sam3-lora`` (what launchers such as torchrun run)."""

import sys

from sam3_lora.cli import main

sys.exit(main())

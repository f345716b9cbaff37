"""sam3-lora: fine-tune SAM3 with LoRA adapters."""

__version__ = "0.1.0"

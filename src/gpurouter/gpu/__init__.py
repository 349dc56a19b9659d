"""The GPU half of a decision: NVML (or the device file), device selection and placement, residents,
the VRAM fit."""

"""Training: floating-point and hardware-aware (noise-injection) training of the reference networks."""

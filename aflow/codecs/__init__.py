"""Vectorized decoders: bytes in, NumPy arrays out, a whole block of lines per call."""

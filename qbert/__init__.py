"""qbert: ultra-low-precision quantization of BERT-family models (Q-BERT, Q8BERT, MKQ-BERT)."""

__version__ = "0.1.0"

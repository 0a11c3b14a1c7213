"""intbert: BERT-family encoders in real integer arithmetic (I-BERT and QDQBERT)."""

__version__ = "0.1.0"

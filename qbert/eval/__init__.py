"""Evaluation metrics matching the reference scorers (conlleval via seqeval, official SQuAD v1.1)."""

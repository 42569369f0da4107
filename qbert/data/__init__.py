"""Task data: strict readers for the GLUE/CoNLL/SQuAD files and Hugging Face hub converters.

Readers live in :mod:`qbert.data.readers`; hub converters in :mod:`qbert.data.hub` (kept separate
so that reading local files never imports ``datasets``). Small committed slices of the real data
live under ``qbert/data/sample/`` (see its README.md).
"""

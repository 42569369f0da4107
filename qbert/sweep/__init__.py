"""Sweeps: job bookkeeping (skip, resume, failure records) and the end-of-sweep report hook."""

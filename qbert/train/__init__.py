"""Lightning wrappers: the task module, the optimiser, the trainer and its loggers."""

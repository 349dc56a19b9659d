"""gpurouter: probe a job's input, pick GPU or CPU arguments, take a flock slot, exec the job."""

__version__ = "0.1.0"

"""Alternatives to exec for a decided job: a monitored child (monitor) or a Slurm allocation (slurm, srun)."""

"""The tools an operator runs by hand: stats, status, top, Prometheus, report, tune; never on a job's path."""

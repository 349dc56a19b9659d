"""The per-job path: everything `run` and the interception form do, stdlib only and import-budgeted."""

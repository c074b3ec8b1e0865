"""RQ entry points. Each takes a job-row id only and runs inside the portal app."""

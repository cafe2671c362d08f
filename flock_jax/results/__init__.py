"""What launch/report.py writes of a sweep: its runs (runs), tables (tables) and plots (plots)."""

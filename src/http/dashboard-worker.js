// timelapse-events dashboard: the shared connection (filled in by the dashboard commit).

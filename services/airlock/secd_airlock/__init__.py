"""secd airlock: every output and log line is checked before it leaves the secure side."""

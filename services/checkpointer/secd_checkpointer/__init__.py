"""secd-checkpointer: signs the audit log's running hash every so often, as its own process."""

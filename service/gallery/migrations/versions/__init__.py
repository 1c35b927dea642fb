"""Gallery schema revisions, oldest first."""

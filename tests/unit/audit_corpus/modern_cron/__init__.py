"""Already migrated: what the audit must not report."""

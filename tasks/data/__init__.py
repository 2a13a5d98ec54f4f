"""Data at scale: sources read as Arrow record batches in bounded memory (readers), kiln's value rules on
whole columns (values), a source's profile in one pass (profile)."""

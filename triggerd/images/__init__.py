"""Container image references, registry access and tag watching."""

"""Response-length prediction trained on CASTILLO statistics."""

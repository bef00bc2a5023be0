"""io/: the split-driver protocols (xen/include/public/io)."""

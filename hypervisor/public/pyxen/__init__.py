"""pyxen's own helpers beside the ABI modules: no Xen header mirrors them,
so the header checks (tests/cabi.py) do not walk this package."""

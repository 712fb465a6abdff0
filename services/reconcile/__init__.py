"""`coinstream reconcile`: the money identities checked across the three services' databases, for operators."""

"""Runtime plugins: how to load, inspect and call a model of one framework."""

"""Built-in YAML configs, installed as ``neurosql_med.configs`` so they work from any directory."""

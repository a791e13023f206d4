"""Built-in forkops playbooks (TOML data, installed as ``forkops.playbooks``)."""

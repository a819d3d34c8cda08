"""CLI verbs, one module per area. Each module exposes ``COMMANDS``: the click commands it adds."""

"""`typing-processor demo`: the whole stack on one machine, and what it measured."""

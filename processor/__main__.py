"""`python -m processor` is the same as the `typing-processor` command."""

from processor.cli import main

raise SystemExit(main())

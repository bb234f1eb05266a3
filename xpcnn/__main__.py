"""`python -m xpcnn` runs the `xpcnn` command."""

from xpcnn.cli import main

raise SystemExit(main())

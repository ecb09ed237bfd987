"""`python -m chargpt_client.cli`: the same as the `chargpt` command."""

from chargpt_client.cli import main

raise SystemExit(main())

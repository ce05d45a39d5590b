"""``python -m improto.client ws://host:port/ws/alice``."""

from improto.client.cli import main

raise SystemExit(main())

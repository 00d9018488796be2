import signal

# `dashboard serve` reloads its config on SIGHUP once it runs; until then it must not die of one.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from dashboard.cli import main  # noqa: E402

raise SystemExit(main())

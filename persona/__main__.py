"""``python -m persona``: the command line (the same as the ``persona`` command)."""
from persona.cli import main

raise SystemExit(main())

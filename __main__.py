from pdsn.cli import main

raise SystemExit(main())

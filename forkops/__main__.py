from forkops.cli import main

raise SystemExit(main())

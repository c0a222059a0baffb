from ndfs.cli import main

raise SystemExit(main())

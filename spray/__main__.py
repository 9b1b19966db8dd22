from spray.cli import main

raise SystemExit(main())

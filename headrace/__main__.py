from headrace.cli.main import main

raise SystemExit(main())

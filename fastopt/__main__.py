from fastopt.cli import main

raise SystemExit(main())

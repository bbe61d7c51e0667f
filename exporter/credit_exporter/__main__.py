from credit_exporter.cli import main

raise SystemExit(main())

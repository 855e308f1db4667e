from safesample.cli import main

raise SystemExit(main())

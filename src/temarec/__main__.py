from temarec.cli import main

raise SystemExit(main())

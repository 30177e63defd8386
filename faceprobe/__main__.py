from faceprobe.cli import main

raise SystemExit(main())

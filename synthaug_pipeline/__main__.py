import sys

from synthaug_pipeline.cli import main

sys.exit(main())

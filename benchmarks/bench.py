"""Run the benchmark from a checkout: `python benchmarks/bench.py --help` (same as `edgecap bench`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))

from edgecap_export.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

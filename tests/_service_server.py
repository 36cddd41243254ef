"""`neuroscribe serve ...` in a process of its own, with the tests' `svcfake:` backend.

python tests/_service_server.py --root DIR --port PORT [serve options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _service_fake
from neuroscribe.cli.app import main

if __name__ == "__main__":
    _service_fake.register()
    main(["serve", *sys.argv[1:]])

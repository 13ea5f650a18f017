"""Fake ``python -m sglang.launch_server`` (see ``sglang._fake`` for behaviour and knobs)."""

import sys
import warnings

if __name__ == "__main__":
    # The real 0.5.23 module warns that `sglang serve` is the recommended entry
    # point (launch_server.py:71-78); the exact wording here is approximate.
    warnings.warn(
        "`python -m sglang.launch_server` is still supported, but `sglang serve` is the "
        "recommended way to launch the server.",
        UserWarning,
        stacklevel=1,
    )
    from sglang._fake.entry import launch_server_main

    sys.exit(launch_server_main(sys.argv[1:]))

"""Worker entry point, spawned by the master:
`python -m imcluster.workers --channel-fd N --slot S --worker-id W` (see start)."""

import warnings

# eventlet prints a deprecation notice on import; operators should not see it
# once per worker. Patch before anything else imports socket or threading.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()

import sys  # noqa: E402

from imcluster.workers.start import main  # noqa: E402

sys.exit(main(sys.argv[1:]))

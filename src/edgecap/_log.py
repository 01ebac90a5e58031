"""The one named logger of the library; applications configure handlers, the library never prints."""

import logging

logger = logging.getLogger("edgecap")
logger.addHandler(logging.NullHandler())  # no "last resort" stderr output unless the application configures logging

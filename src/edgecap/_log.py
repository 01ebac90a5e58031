"""The one named logger of the library; applications configure handlers, the library never prints."""

import logging

logger = logging.getLogger("edgecap")

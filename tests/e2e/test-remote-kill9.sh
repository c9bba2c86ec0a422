#!/usr/bin/env bash
# test-kill9.sh with every device a remote member (an nbdkit file server on
# its own unix socket, in its own failure domain): see make_config.
STRATA_REMOTE=1 exec bash "$(dirname "$0")/test-kill9.sh"

/* strata: the administrative verbs, shared by the CLI and the server.
 *
 * admin_run() executes one command line (status, apply, volume ...) on
 * an open pool and prints to OUT and ERR.  The CLI calls it on a pool it
 * opened itself; the serving process calls it for commands that arrive
 * on the control socket (control.h), so the same verbs behave the same
 * way online and offline.
 */
#ifndef STRATA_ADMIN_H
#define STRATA_ADMIN_H

#include <stdbool.h>
#include <stdio.h>

#include "pool.h"

/* Where the command runs, for status. */
struct admin_ctx {
  bool online;			/* inside the serving process */
  int connections;		/* open NBD connections (online) */
};

/* Run ARGV[0..ARGC) (ARGV[0] is the verb) on P.  Returns the exit code:
 * 0 success, 1 failure (message on ERR), 2 usage error. */
int admin_run (struct pool *p, const struct admin_ctx *ctx, int argc,
               char **argv, FILE *out, FILE *err);

/* True if VERB changes the pool (needs it open for writing). */
bool admin_verb_writes (const char *verb, int argc, char **argv);

#endif /* STRATA_ADMIN_H */

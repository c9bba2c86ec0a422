/* strata: the control socket between the CLI and the serving process.
 *
 * Protocol (unix stream socket, little-endian):
 *   request:  u32 argc, then argc times (u32 len, bytes)   at most 64 args
 *   reply:    frames (u8 kind, u32 len, bytes), where kind is 'o' for
 *             standard output, 'e' for standard error, and 'x' (len 4,
 *             i32 exit code) last.
 * Frames stream while the command runs, so long jobs can show progress.
 */
#ifndef STRATA_CONTROL_H
#define STRATA_CONTROL_H

#include <signal.h>
#include <stdio.h>

#include "admin.h"
#include "pool.h"

struct control_server;

/* Callback that fills in the live part of the admin context. */
typedef void (*control_ctx_fn) (struct admin_ctx *ctx);

/* Listen on PATH (a stale socket file is replaced) and serve commands on
 * P from a background thread.  Returns NULL with errno on failure. */
struct control_server *control_server_start (struct pool *p, const char *path,
                                             control_ctx_fn ctx_fn);

/* Stop the thread, close and remove the socket. */
void control_server_stop (struct control_server *s);

/* Run ARGV on the server at PATH, copying its output to OUT and ERR.
 * Returns 0 and sets *EXIT_CODE; or -1 with errno ENOENT/ECONNREFUSED
 * when nobody serves the pool there (the caller then opens it itself),
 * or another errno on a protocol failure. */
int control_call (const char *path, int argc, char **argv, FILE *out,
                  FILE *err, int *exit_code);

/* While control_call() waits for its reply, a signal handler (installed
 * without SA_RESTART) that sets *FLAG makes it send STOP_ARGV[0..ARGC)
 * (the job's --stop) to the server on a second connection, once, and go
 * on reading the reply: the job saves its place and reports, as one
 * stopped offline does.  FLAG NULL turns this off. */
void control_call_stop_on (volatile sig_atomic_t *flag, int argc,
                           char **stop_argv);

#endif /* STRATA_CONTROL_H */

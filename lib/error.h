/* strata: the library's error rule.
 *
 * Every lib function that fails returns -1 (or NULL) with errno set, and
 * leaves a human-readable message in a thread-local buffer that
 * strata_last_error() returns.  Callers higher up add context with
 * strata_error_prefix().  Only main() prints and exits; the plugin turns
 * the message into nbdkit_error().
 */
#ifndef STRATA_ERROR_H
#define STRATA_ERROR_H

/* Record a message and set errno to ERRNUM (which must be non-zero).
 * Always returns -1 so callers can write "return strata_error (...)". */
int strata_error (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Prepend "CONTEXT: " to the current message, keeping errno.
 * Returns -1. */
int strata_error_prefix (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

/* The last message recorded on this thread ("" if none). */
const char *strata_last_error (void);

/* Forget the last message (used by tests). */
void strata_error_clear (void);

#endif /* STRATA_ERROR_H */

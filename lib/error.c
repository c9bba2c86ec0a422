/* strata: thread-local error messages (see error.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define ERROR_MAX 1024

static __thread char last_error[ERROR_MAX];

int
strata_error (int errnum, const char *fmt, ...)
{
  char msg[ERROR_MAX];
  va_list ap;

  /* Formatted apart first: an argument may be strata_last_error (), and
   * vsnprintf's source and destination must not overlap. */
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  memcpy (last_error, msg, sizeof msg);
  errno = errnum ? errnum : EIO;
  return -1;
}

int
strata_error_prefix (const char *fmt, ...)
{
  int saved = errno;
  char prefix[ERROR_MAX], old[ERROR_MAX];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (prefix, sizeof prefix, fmt, ap);
  va_end (ap);
  memcpy (old, last_error, sizeof old);
  snprintf (last_error, sizeof last_error, "%s: %s", prefix, old);
  errno = saved;
  return -1;
}

const char *
strata_last_error (void)
{
  return last_error;
}

void
strata_error_clear (void)
{
  last_error[0] = '\0';
}

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
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (last_error, sizeof last_error, fmt, ap);
  va_end (ap);
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
